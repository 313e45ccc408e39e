"""A registry of tenant names that every role may list (row-level security hides the rest).

Commands that act for every tenant (`cadml schedule-tick` from the chart's CronJob,
`evaluate`, `status`, `history`, `audit verify`, Git mode noticing a tenant removed
from Git) listed tenants from `audit_head`, which row-level security hides from the
runtime role on PostgreSQL: there they found no tenant and did nothing. The names
alone are listed here; every row of a tenant is still read in a transaction scoped
to it. A connection may register only the tenant it is scoped to.

Expand + backfill: the table is created and filled from `audit_head` (the owner
lifts FORCE on `audit_head` for the copy inside this transaction).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("ALTER TABLE audit_head NO FORCE ROW LEVEL SECURITY")
    op.execute("INSERT INTO tenant (tenant_id, created_at) "
               "SELECT tenant_id, CURRENT_TIMESTAMP FROM audit_head")
    if not postgres:
        return
    op.execute("ALTER TABLE audit_head FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenant ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenant FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY tenant_list ON tenant FOR SELECT USING (true)")
    op.execute("CREATE POLICY tenant_register ON tenant FOR INSERT "
               "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
    role = context.config.attributes.get("app_role", "cadml_app")
    op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
               f"THEN GRANT SELECT, INSERT ON tenant TO {role}; END IF; END $$")


def downgrade() -> None:
    op.drop_table("tenant")
