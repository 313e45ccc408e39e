"""Object status for Git mode (`cadml status`), and forced routes for manual overrides.

`policy_route.forced` is added with a default (expand), existing rows keep false
(backfill needs nothing), then the canary-weight CHECK is replaced so only a
forced route may give a canary 0 or 100 % (enforce).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "object_status",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "name", name=op.f("pk_object_status")),
    )
    with op.batch_alter_table("policy_route") as batch:
        batch.add_column(sa.Column("forced", sa.Boolean(), nullable=False,
                                   server_default=sa.text("false")))
        batch.drop_constraint(op.f("ck_policy_route_canary_weight"), type_="check")
        batch.create_check_constraint("canary_weight",
                                      "is_stable OR forced OR weight BETWEEN 1 AND 99")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE object_status ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE object_status FORCE ROW LEVEL SECURITY")
        op.execute("CREATE POLICY tenant_isolation ON object_status "
                   "USING (tenant_id = current_setting('app.tenant_id', true)) "
                   "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
        role = context.config.attributes.get("app_role", "cadml_app")
        op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                   f"THEN GRANT SELECT, INSERT, UPDATE, DELETE ON object_status TO {role}; "
                   "END IF; END $$")


def downgrade() -> None:
    with op.batch_alter_table("policy_route") as batch:
        batch.drop_constraint(op.f("ck_policy_route_canary_weight"), type_="check")
        batch.create_check_constraint("canary_weight", "is_stable OR weight BETWEEN 1 AND 99")
        batch.drop_column("forced")
    op.drop_table("object_status")
