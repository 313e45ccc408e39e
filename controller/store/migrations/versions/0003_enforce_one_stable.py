"""Enforce: model_version.model_key NOT NULL and one STABLE per (tenant_id, model_key).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_WHERE = sa.text("stage = 'STABLE'")


def upgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.alter_column("model_key", existing_type=sa.String(length=63), nullable=False)
        batch.create_index("uq_model_version_one_stable", ["tenant_id", "model_key"],
                           unique=True, sqlite_where=_WHERE, postgresql_where=_WHERE)


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_index("uq_model_version_one_stable", sqlite_where=_WHERE,
                         postgresql_where=_WHERE)
        batch.alter_column("model_key", existing_type=sa.String(length=63), nullable=True)
