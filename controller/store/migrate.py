"""Alembic, driven from code: upgrade a store to a revision and read its current revision."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, insert, select, text

from controller.errors import UsageError
from controller.store.engine import READ_ONLY
from controller.store.tables import metadata, tenant_role

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(app_role: str = "cadml_app") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["app_role"] = app_role
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # the package always ships migrations
    return head


def upgrade(engine: Engine, revision: str = "head", app_role: str = "cadml_app") -> None:
    cfg = _config(app_role)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


# What the runtime role may do, table by table (the migrations grant the same as they
# create tables; `grant_runtime_role` re-applies all of it, e.g. for a role made later).
APPEND_ONLY = frozenset({"release_record", "audit_event", "tenant"})
SELECT_ONLY = frozenset({"tenant_role"})  # written by the owner alone (`grant_tenant_role`)
_TENANT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _plain_role(conn: Connection, role: str, option: str) -> None:
    """Refuse a role row-level security would not hold: missing, superuser, BYPASSRLS,
    owner of the tables."""
    if not role.replace("_", "").isalnum():
        raise UsageError(f"{option} {role!r}: letters, digits and _ only")
    found = conn.execute(text(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if found is None:
        raise UsageError(f"role {role} does not exist: CREATE ROLE {role} LOGIN PASSWORD "
                         "'…' NOSUPERUSER NOBYPASSRLS, then run this command again")
    owned = conn.execute(text(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
        "AND tableowner = :r"), {"r": role}).scalar()
    if found.rolsuper or found.rolbypassrls or owned:
        raise UsageError(f"role {role} is a superuser, BYPASSRLS or owns the tables: "
                         "row-level security would not apply to it; use a plain role")


def _grant(conn: Connection, role: str) -> list[str]:
    for table in sorted(metadata.tables):
        verbs = ("SELECT" if table in SELECT_ONLY else "SELECT, INSERT" if table in APPEND_ONLY
                 else "SELECT, INSERT, UPDATE, DELETE")
        conn.execute(text(f"GRANT {verbs} ON {table} TO {role}"))
    conn.execute(text(f"GRANT SELECT ON alembic_version TO {role}"))
    conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    return sorted(t for t in metadata.tables if t not in APPEND_ONLY | SELECT_ONLY)


def grant_runtime_role(engine: Engine, role: str) -> list[str]:
    """Grant `role` what the runtime needs on PostgreSQL (idempotent); the tables it may
    write. Refuses a role row-level security would not apply to."""
    with engine.begin() as conn:
        _plain_role(conn, role, "--app-role")
        return _grant(conn, role)


def grant_tenant_role(engine: Engine, tenant: str, role: str,
                      shared_role: str = "cadml_app") -> bool:
    """Bind `role` to `tenant` on PostgreSQL (idempotent): the runtime grants, and the
    `tenant_role` row the restrictive policies of migration 0013 read, so the role
    reaches no other tenant whatever `app.tenant_id` it sets. True when newly bound.
    Refused, with nothing changed: the shared runtime role, a role RLS would not hold,
    one that could become another role (a member of one, CREATEROLE), one bound to
    another tenant."""
    if not _TENANT_NAME.match(tenant):
        raise UsageError(f"tenant {tenant!r} is not a namespace name (a DNS label)")
    if role == shared_role:
        raise UsageError(f"{role} is the shared runtime role the operator uses for every "
                         "tenant; give the tenant a role of its own")
    if engine.dialect.name != "postgresql":
        raise UsageError("per-tenant roles need PostgreSQL (row-level security); the "
                         "embedded SQLite store has no roles")
    with engine.begin() as conn:
        _plain_role(conn, role, "--role")
        steps_around = conn.execute(text(
            "SELECT r.rolcreaterole OR EXISTS (SELECT 1 FROM pg_auth_members m "
            "WHERE m.member = r.oid) FROM pg_roles r WHERE r.rolname = :r"), {"r": role}
        ).scalar()
        if steps_around:
            raise UsageError(f"role {role} has CREATEROLE or is a member of another role: "
                             "it could act as a role not bound to its tenant")
        bound = conn.execute(select(tenant_role.c.tenant_id).where(
            tenant_role.c.role_name == role)).scalar()
        if bound is not None and bound != tenant:
            raise UsageError(f"role {role} is bound to tenant {bound}; a role serves one "
                             "tenant (create another role)")
        if bound is None:
            conn.execute(insert(tenant_role).values(role_name=role, tenant_id=tenant,
                                                    created_at=datetime.now(UTC)))
        _grant(conn, role)
    return bound is None


def downgrade(engine: Engine, revision: str) -> None:
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})  # a probe: no write lock on SQLite
        return MigrationContext.configure(conn).get_current_revision()
