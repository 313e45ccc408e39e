"""Bindings that can be suspended or deleted, and routes that keep their jobs.

`model_run.binding_state`: whether the job's binding was active or suspended (its
version not routable by the effective policy) when the run was served; NULL: no
binding. `ai_analysis_jobs.unbound`: a deleted binding stays as a tombstone with the
next `updated_seq`, so workers that read only the changes learn of the deletion.
`policy_route.slots`: the hash slots (0..99) a version holds, placed so that a
version's jobs move only when its own weight shrinks (a promotion keeps them).

Expand only: nullable columns or a default; rows written before keep NULL (no slots:
routes are laid out by position, as before).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_run", sa.Column("binding_state", sa.String(length=16), nullable=True))
    op.add_column("ai_analysis_jobs", sa.Column("unbound", sa.Boolean(), nullable=False,
                                                server_default=sa.text("false")))
    op.add_column("policy_route", sa.Column("slots", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table, column in (("policy_route", "slots"), ("ai_analysis_jobs", "unbound"),
                          ("model_run", "binding_state")):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
