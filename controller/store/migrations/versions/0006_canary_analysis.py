"""Canary analysis state: failures counted per policy spec and canary version, and aborts.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "canary_analysis",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("policy_name", sa.String(length=253), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("aborted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("failures >= 0", name=op.f("ck_canary_analysis_failures_nonneg")),
        sa.PrimaryKeyConstraint("tenant_id", "policy_name", "version",
                                name=op.f("pk_canary_analysis")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE canary_analysis ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE canary_analysis FORCE ROW LEVEL SECURITY")
        op.execute("CREATE POLICY tenant_isolation ON canary_analysis "
                   "USING (tenant_id = current_setting('app.tenant_id', true)) "
                   "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
        role = context.config.attributes.get("app_role", "cadml_app")
        op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                   f"THEN GRANT SELECT, INSERT, UPDATE, DELETE ON canary_analysis TO {role}; "
                   "END IF; END $$")


def downgrade() -> None:
    op.drop_table("canary_analysis")
