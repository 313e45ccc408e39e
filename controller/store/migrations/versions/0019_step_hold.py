"""When a canary's steps were first seen held (an override, the policy-wide analysis
aborted), so a pass under the hold that changes nothing writes nothing.

`rollout_step.held_since`: set once by the first pass under a hold, cleared by the first
pass after it (which starts the current step again). NULL: not held.

Expand only: a nullable column, no backfill (a row held now is marked by its next pass).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollout_step", sa.Column("held_since", sa.DateTime(timezone=True),
                                            nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_step") as batch:
        batch.drop_column("held_since")
