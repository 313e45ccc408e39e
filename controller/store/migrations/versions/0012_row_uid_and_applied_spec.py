"""Rows remember which object wrote them (`uid`) and a version the spec it applied.

The generation guard compares `metadata.generation` only within one incarnation of an
object: an object deleted and created again (a restored or new cluster on the same
store, Git mode after the operator) starts at generation 1 and is newer, not staler.
`model_version.spec` is the spec last applied, so Git mode judges the CRD's transition
rules against it rather than against columns a drift may have changed.

Expand only: nullable columns; rows written before keep NULL (no uid: any incarnation
may write them once; no spec: the columns stand in for it).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_UID_TABLES = ("model_catalog", "model_version", "model_rollout_policy")


def upgrade() -> None:
    for table in _UID_TABLES:
        op.add_column(table, sa.Column("uid", sa.String(length=64), nullable=True))
    op.add_column("model_version", sa.Column("spec", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_column("spec")
    for table in _UID_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("uid")
