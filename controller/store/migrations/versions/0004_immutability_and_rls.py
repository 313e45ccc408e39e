"""Release records immutable and audit events append-only (triggers, both engines);
PostgreSQL row-level security by tenant, and grants for the runtime role.

The runtime role (default `cadml_app`, set with the Alembic attribute `app_role`)
must not own the tables and must not be a superuser or BYPASSRLS: RLS does not
apply to those. FORCE ROW LEVEL SECURITY makes it apply to the owner too.
Migrations run as an owner or admin role that may bypass RLS.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TENANT_TABLES = [
    "model_catalog", "model_version", "model_rollout_policy", "policy_snapshot", "policy_route",
    "release_record", "ai_analysis_jobs", "model_run", "evaluation", "audit_event",
    "audit_head", "schedule_tick", "worker_state",
]
FROZEN = {"release_record": "release records are immutable",
          "audit_event": "the audit trail is append-only"}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table, why in FROZEN.items():
            for verb in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{why}'); END")
        return
    op.execute(
        "CREATE FUNCTION cadml_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION '%: %', TG_TABLE_NAME, TG_ARGV[0] "
        "USING ERRCODE = 'integrity_constraint_violation'; END $$"
    )
    for table, why in FROZEN.items():
        op.execute(f"CREATE TRIGGER {table}_frozen BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION cadml_refuse_change('{why}')")
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            "USING (tenant_id = current_setting('app.tenant_id', true)) "
            "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )
    role = context.config.attributes.get("app_role", "cadml_app")
    if not role.replace("_", "").isalnum():
        raise RuntimeError(f"app_role {role!r}: letters, digits and _ only")
    writable = [t for t in TENANT_TABLES if t not in FROZEN]
    op.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(writable)} TO {role}; "
        f"GRANT SELECT, INSERT ON {', '.join(FROZEN)} TO {role}; "
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}; "
        f"GRANT SELECT ON alembic_version TO {role}; "
        "END IF; END $$"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in FROZEN:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER {table}_no_{verb}")
        return
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in FROZEN:
        op.execute(f"DROP TRIGGER {table}_frozen ON {table}")
    op.execute("DROP FUNCTION cadml_refuse_change()")
