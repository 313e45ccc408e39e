"""Per-tenant database roles: a role bound to a tenant sees and writes that tenant alone,
whatever `app.tenant_id` it sets.

`tenant_role` maps a login role to its tenant (written by `cadml db grant-tenant`, as
the owner; every role may read it). On PostgreSQL each table under row-level security
gets a RESTRICTIVE policy keyed on `current_user`: for a bound role the row's tenant
must be its own, on top of the `app.tenant_id` policy; an unbound role (the shared
runtime role of the operator) is not restricted further. A tenant's worker holding only
its own role's credential can then neither read nor write another tenant, even when it
chooses the session setting itself.

Expand only: a new table and new policies; nothing existing changes.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# every table under row-level security at 0012
RLS_TABLES = (
    "ai_analysis_jobs", "analysis_state", "audit_event", "audit_head", "evaluation",
    "model_catalog", "model_rollout_policy", "model_run", "model_version", "object_status",
    "policy_route", "policy_snapshot", "release_record", "schedule_tick", "tenant",
    "worker_state",
)
# unbound roles pass; a bound role's rows are its tenant's. The subquery is uncorrelated:
# one InitPlan per statement, so an unbound role pays a parameter test per row, no join
_ROLE_TENANT = "(SELECT r.tenant_id FROM tenant_role r WHERE r.role_name = current_user)"
BOUND = f"{_ROLE_TENANT} IS NULL OR tenant_id = {_ROLE_TENANT}"


def upgrade() -> None:
    op.create_table(
        "tenant_role",
        sa.Column("role_name", sa.String(length=63), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("role_name", name=op.f("pk_tenant_role")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("GRANT SELECT ON tenant_role TO PUBLIC")  # the policies read it as the caller
    for table in RLS_TABLES:
        op.execute(f"CREATE POLICY tenant_role_binding ON {table} AS RESTRICTIVE "
                   f"USING ({BOUND}) WITH CHECK ({BOUND})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in RLS_TABLES:
            op.execute(f"DROP POLICY tenant_role_binding ON {table}")
    op.drop_table("tenant_role")
