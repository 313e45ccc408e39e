"""Per-version search tuning: model_version.ef_search (spec.search.efSearch).

Expand only: a nullable column, NULL meaning "the worker's default", so existing rows
need no backfill and older readers keep working.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_version", sa.Column("ef_search", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_column("ef_search")
