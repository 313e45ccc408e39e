"""Expand and backfill: model_version.model_key (nullable), copied from its model; validate.

Validation refuses to continue when a (tenant, model_key) already has two STABLE
versions, naming them, because 0003 could not enforce the rule on such data.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.add_column(sa.Column("model_key", sa.String(length=63), nullable=True))
    op.execute(
        "UPDATE model_version SET model_key = (SELECT m.model_key FROM model_catalog m "
        "WHERE m.tenant_id = model_version.tenant_id AND m.id = model_version.model_id)"
    )
    conflicts = op.get_bind().execute(sa.text(
        "SELECT tenant_id, model_key, COUNT(*) FROM model_version WHERE stage = 'STABLE' "
        "GROUP BY tenant_id, model_key HAVING COUNT(*) > 1"
    )).fetchall()
    if conflicts:
        listed = ", ".join(f"{t}/{k} ({n} STABLE)" for t, k, n in conflicts)
        raise RuntimeError(
            f"cannot enforce one STABLE version per model: {listed}; deprecate the extra "
            "versions, then run the upgrade again"
        )


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_column("model_key")
