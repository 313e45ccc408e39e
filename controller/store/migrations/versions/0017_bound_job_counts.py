"""Bound jobs counted per version, for the RolloutPolicy's suspendedBindings.

`model_version.bound_jobs`: how many jobs are bound to the version now, kept by the
binds and unbinds in their own transaction, so a reconcile pass reads the counts with
the versions (bounded by versions) instead of counting every job ever bound. Backfilled
from `ai_analysis_jobs` (tombstones of deleted bindings not counted).

Expand only: a column with a default, then its backfill.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_version", sa.Column("bound_jobs", sa.Integer(), nullable=False,
                                             server_default=sa.text("0")))
    op.execute("UPDATE model_version SET bound_jobs = (SELECT count(*) FROM ai_analysis_jobs j "
               "WHERE j.tenant_id = model_version.tenant_id "
               "AND j.model_version_id = model_version.id AND NOT j.unbound)")


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_column("bound_jobs")
