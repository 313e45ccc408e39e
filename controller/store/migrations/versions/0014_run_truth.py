"""Runs tell the truth: the reviewer's explicit agreement and the request's breakdown.

`model_run.human_agrees`: whether the human agreed with the AI's suggestion, as the
reviewer said (`agree` in the review API); `review_override_rate` counts its `false`.
`parse_ms` / `search_ms`: the parts of `latency_ms` (the whole request) spent parsing
the drawing and searching the index.

Expand only: nullable columns; runs written or reviewed before keep NULL (their
override is judged as before: a rejection, or a decision other than the suggestion).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_run", sa.Column("human_agrees", sa.Boolean(), nullable=True))
    op.add_column("model_run", sa.Column("parse_ms", sa.Float(), nullable=True))
    op.add_column("model_run", sa.Column("search_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_run") as batch:
        for column in ("search_ms", "parse_ms", "human_agrees"):
            batch.drop_column(column)
