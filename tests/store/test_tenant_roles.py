"""Per-tenant PostgreSQL roles (`cadml db grant-tenant`): a worker holding tenant A's
credential reads and writes nothing of tenant B, even when it sets `app.tenant_id` to B
itself; the shared runtime role keeps serving the operator. PostgreSQL only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from controller.cli import main
from controller.store import Store
from controller.store.engine import make_engine
from tests.store.helpers import seed_model
from tests.stores import APP_ROLE, Backend, _admin

ROLE_A, ROLE_B = "cadml_tenant_acme_t", "cadml_tenant_globex_t"


@pytest.fixture
def tenant_roles(pg_backend: Backend) -> Iterator[Backend]:
    admin = _admin()
    with admin.connect() as c:
        for role in (ROLE_A, ROLE_B):
            c.execute(text(f"DROP ROLE IF EXISTS {role}"))
            c.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
    seed_model(pg_backend.store, tenant="acme")
    seed_model(pg_backend.store, tenant="globex", model="dedup")
    try:
        yield pg_backend
    finally:
        with pg_backend.admin.begin() as c:  # its grants live in this database
            for role in (ROLE_A, ROLE_B):
                c.execute(text(f"DROP OWNED BY {role}"))
        with admin.connect() as c:
            for role in (ROLE_A, ROLE_B):
                c.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _as(backend: Backend, role: str) -> str:
    return make_url(backend.admin_url).set(username=role, password=None).render_as_string(False)


def _grant(backend: Backend, tenant: str, role: str) -> int:
    return main(["db", "grant-tenant", tenant, "--role", role, "--store", backend.admin_url])


def _count(c: Connection, table: str, tenant: str | None = None) -> int:
    where = "" if tenant is None else f" WHERE tenant_id = '{tenant}'"
    return int(c.execute(text(f"SELECT count(*) FROM {table}{where}")).scalar_one())


def test_tenant_role_reaches_no_other_tenant_whatever_it_sets(
        tenant_roles: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    b = tenant_roles
    assert _grant(b, "acme", ROLE_A) == 0
    assert f"role {ROLE_A}: bound to tenant acme" in capsys.readouterr().out
    assert _grant(b, "acme", ROLE_A) == 0  # idempotent
    assert "already bound" in capsys.readouterr().out
    engine = create_engine(_as(b, ROLE_A))
    try:
        # hand-written SQL, as a compromised worker would send it: it claims tenant B
        with engine.begin() as c:
            c.execute(text("SELECT set_config('app.tenant_id', 'globex', true)"))
            for table in ("model_catalog", "model_version", "model_run", "policy_snapshot",
                          "audit_event", "audit_head", "tenant"):
                assert _count(c, table, "globex") == 0, table
            assert c.execute(text("UPDATE model_catalog SET description = 'pwned' "
                                  "WHERE tenant_id = 'globex'")).rowcount == 0
            assert c.execute(text("DELETE FROM model_version "
                                  "WHERE tenant_id = 'globex'")).rowcount == 0
        for insert in (
            "INSERT INTO schedule_tick (tenant_id, window_key, result, created_at) "
            "VALUES ('globex', 'w', '{}', now())",
            "INSERT INTO tenant (tenant_id, created_at) VALUES ('globex2', now())",
        ):
            with pytest.raises(DBAPIError, match="row-level security"), engine.begin() as c:
                c.execute(text("SELECT set_config('app.tenant_id', 'globex', true)"))
                c.execute(text(insert))
        with pytest.raises(DBAPIError, match="permission denied"), engine.begin() as c:
            c.execute(text("UPDATE tenant_role SET tenant_id = 'globex'"))
        # its own tenant works as before
        with engine.begin() as c:
            c.execute(text("SELECT set_config('app.tenant_id', 'acme', true)"))
            assert _count(c, "model_catalog") == 1 and _count(c, "tenant") == 1
            c.execute(text("INSERT INTO schedule_tick (tenant_id, window_key, result, "
                           "created_at) VALUES ('acme', 'w', '{}', now())"))
    finally:
        engine.dispose()
    with b.admin.connect() as c:  # nothing of globex changed behind the application
        assert c.execute(text("SELECT description FROM model_catalog WHERE tenant_id = "
                              "'globex'")).scalar() != "pwned"
        assert _count(c, "model_version", "globex") == 2
        assert _count(c, "schedule_tick", "globex") == 0
    # through the application: the store as tenant A's role
    store = Store(make_engine(_as(b, ROLE_A)))
    try:
        assert store.tenants() == ["acme"]
        with store.transaction("globex", "w") as tx:
            assert tx.model_names() == []
        seed_model(store, tenant="acme", model="second")  # writes, snapshots, audit
        assert store.verify_audit("acme") is None
    finally:
        store.dispose()
    # the shared runtime role still serves every tenant
    assert b.store.tenants() == ["acme", "globex"]
    with b.store.transaction("globex", "operator") as tx:
        assert tx.model_names() == ["dedup"]


@pytest.mark.parametrize(("args", "words"), [
    (["globex", "--role", ROLE_A], "bound to tenant acme"),
    (["acme", "--role", APP_ROLE], "shared runtime role"),
    (["acme", "--role", "postgres"], "row-level security would not apply"),
    (["acme", "--role", "nobody_here_t"], "does not exist"),
    (["Not_A_Namespace", "--role", ROLE_B], "DNS label"),
])
def test_grant_tenant_refuses_and_changes_nothing(
        tenant_roles: Backend, capsys: pytest.CaptureFixture[str], args: list[str],
        words: str) -> None:
    assert _grant(tenant_roles, "acme", ROLE_A) == 0
    capsys.readouterr()
    assert main(["db", "grant-tenant", *args, "--store", tenant_roles.admin_url]) == 2
    assert words in capsys.readouterr().err
    with tenant_roles.admin.connect() as c:
        rows = c.execute(text("SELECT role_name, tenant_id FROM tenant_role")).all()
    assert [tuple(r) for r in rows] == [(ROLE_A, "acme")]


def test_grant_tenant_refuses_a_role_that_can_become_another(
        tenant_roles: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    with tenant_roles.admin.connect() as c:
        c.execute(text(f"GRANT {APP_ROLE} TO {ROLE_B}"))
        c.commit()
    try:
        assert _grant(tenant_roles, "globex", ROLE_B) == 2
        assert "member of another role" in capsys.readouterr().err
    finally:
        with tenant_roles.admin.connect() as c:
            c.execute(text(f"REVOKE {APP_ROLE} FROM {ROLE_B}"))
            c.commit()


def test_a_tenant_role_cannot_stall_another_tenants_bindings(tenant_roles: Backend) -> None:
    """Tenant globex's role holds the advisory lock `cadml-bindings/acme` (a session lock
    is not bounded by its transactions); a bind of tenant acme through the shared runtime
    role must still commit. It waits as long as the lock is held: every bind of acme (and
    the worker threads running them) stalled. Binds now lock the tenant's audit chain head,
    a row row-level security keeps from every other tenant's role."""
    import threading

    b = tenant_roles
    assert _grant(b, "globex", ROLE_B) == 0
    hostile = create_engine(_as(b, ROLE_B))
    done = threading.Event()

    def bind() -> None:
        with b.store.transaction("acme", "ann") as tx:
            tx.bind_job("job-1", "part-sim-1.0.0", {})
        done.set()

    try:
        with hostile.connect() as c:
            c.execute(text("SELECT pg_advisory_lock(hashtext('cadml-bindings/acme'))"))
            worker = threading.Thread(target=bind, daemon=True)
            worker.start()
            committed = done.wait(10)  # a positive signal: the bind committed
            c.execute(text("SELECT pg_advisory_unlock_all()"))
        worker.join(30)
        assert committed, "acme's bind waited on a lock another tenant's role holds"
    finally:
        hostile.dispose()
