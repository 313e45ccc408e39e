"""Reads of a reconcile pass and of a worker's refresh bounded by live objects, not history.

Indexes: a model's newest rollback snapshot (partial, rollback sources only), the first
run of a model from a point in time on, a version's newest evaluation, worker rows by
age (stale incarnations expire). A change marker on job bindings:
`ai_analysis_jobs.updated_seq`, rising with every bind in a tenant, so a worker reads
only the bindings changed since its last read.

Expand → backfill → enforce for updated_seq: the column is added nullable, existing
rows take their id (ids rise, so the order of past binds is kept), then NOT NULL.
On PostgreSQL the owner lifts FORCE ROW LEVEL SECURITY on the table for the backfill
inside this transaction, or it would see no row.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ROLLBACKS = sa.text("source IN ('rollback', 'analysis-abort')")


def upgrade() -> None:
    op.add_column("ai_analysis_jobs", sa.Column("updated_seq", sa.BigInteger(), nullable=True))
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("ALTER TABLE ai_analysis_jobs NO FORCE ROW LEVEL SECURITY")
    op.execute("UPDATE ai_analysis_jobs SET updated_seq = id")
    if postgres:
        op.execute("ALTER TABLE ai_analysis_jobs FORCE ROW LEVEL SECURITY")
    with op.batch_alter_table("ai_analysis_jobs") as batch:
        batch.alter_column("updated_seq", existing_type=sa.BigInteger(), nullable=False)
        batch.create_index("ix_ai_analysis_jobs_changes", ["tenant_id", "updated_seq"])
    op.create_index("ix_policy_snapshot_rollbacks", "policy_snapshot",
                    ["tenant_id", "model_id", "created_at", "id"],
                    sqlite_where=_ROLLBACKS, postgresql_where=_ROLLBACKS)
    op.create_index("ix_model_run_model_time", "model_run",
                    ["tenant_id", "model_id", "created_at", "policy_version"])
    op.create_index("ix_evaluation_latest", "evaluation",
                    ["tenant_id", "model_version_id", "job_key", "window_end", "id"])
    op.create_index("ix_worker_state_updated", "worker_state", ["tenant_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_state_updated", table_name="worker_state")
    op.drop_index("ix_evaluation_latest", table_name="evaluation")
    op.drop_index("ix_model_run_model_time", table_name="model_run")
    op.drop_index("ix_policy_snapshot_rollbacks", table_name="policy_snapshot")
    with op.batch_alter_table("ai_analysis_jobs") as batch:
        batch.drop_index("ix_ai_analysis_jobs_changes")
        batch.drop_column("updated_seq")
