"""Audit tampering is detected; PostgreSQL row-level security isolates tenants."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from controller.errors import StoreError
from controller.records import ModelRow
from controller.store.audit import chain_hash
from tests.store.helpers import seed_model
from tests.stores import APP_ROLE, Backend


def _tamper(b: Backend, sql: str, **params: object) -> None:
    """Change audit rows as someone who got around the application AND its triggers."""
    with b.admin.begin() as c:
        if b.kind == "sqlite":
            for verb in ("update", "delete"):
                c.execute(text(f"DROP TRIGGER audit_event_no_{verb}"))
        else:
            c.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_frozen"))
        c.execute(text(sql), params)


def _five_events(b: Backend) -> None:
    seed_model(b.store)
    with b.store.transaction("acme", "alice") as tx:
        for i in range(3):
            tx.audit("change", "Model", "part-sim", {"i": i})


@pytest.mark.parametrize(("sql", "seq", "words"), [
    ("UPDATE audit_event SET actor = 'mallory' WHERE seq = 3", 3, "content altered"),
    ("UPDATE audit_event SET details = '{\"i\": 9}' WHERE seq = 4", 4, "content altered"),
    ("DELETE FROM audit_event WHERE seq = 2", 2, "missing"),
    ("DELETE FROM audit_event WHERE seq = 5", 5, "missing"),
])
def test_tampering_is_detected_and_named(backend: Backend, sql: str, seq: int,
                                         words: str) -> None:
    _five_events(backend)
    assert backend.store.verify_audit("acme") is None
    _tamper(backend, sql)
    problem = backend.store.verify_audit("acme")
    assert problem is not None and problem.seq == seq and words in problem.problem


def test_rewriting_a_row_with_a_fresh_hash_breaks_the_next_link(backend: Backend) -> None:
    """Mallory alters row 2 and gives it a hash consistent with its new content: row 2
    checks out on its own, and the chain breaks at row 3, whose link names the old hash."""
    _five_events(backend)
    with backend.store.transaction("acme", "test") as tx:
        row = next(e for e in tx.audit_events() if e.seq == 2)
    forged = chain_hash(row.prev_hash, row.tenant, row.seq, row.at, "mallory", row.action,
                        row.object_kind, row.object_name, row.details)
    assert forged != row.hash
    _tamper(backend, "UPDATE audit_event SET actor = 'mallory', hash = :h "
                     "WHERE tenant_id = 'acme' AND seq = 2", h=forged)
    problem = backend.store.verify_audit("acme")
    assert problem is not None and problem.seq == 3 and "link" in problem.problem


def test_flipping_a_stored_hash_is_named(backend: Backend) -> None:
    _five_events(backend)
    with backend.store.transaction("acme", "test") as tx:
        old = next(e.hash for e in tx.audit_events() if e.seq == 2)
    flipped = ("0" if old[0] != "0" else "1") + old[1:]
    _tamper(backend, "UPDATE audit_event SET hash = :h WHERE tenant_id = 'acme' AND seq = 2",
            h=flipped)
    problem = backend.store.verify_audit("acme")
    assert problem is not None and problem.seq == 2 and "content altered" in problem.problem


def test_audit_verify_cli(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    _five_events(backend)
    assert main(["audit", "verify", "--store", backend.admin_url, "--tenant", "acme"]) == 0
    _tamper(backend, "UPDATE audit_event SET action = 'nothing' WHERE seq = 4")
    assert main(["audit", "verify", "--store", backend.admin_url, "--tenant", "acme"]) == 1
    assert "seq 4" in capsys.readouterr().out


# ---------------------------------------------------------------- PostgreSQL only


def test_runtime_role_is_neither_owner_nor_superuser(pg_backend: Backend) -> None:
    with pg_backend.store.engine.connect() as c:
        who = c.execute(text("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
                             "WHERE rolname = current_user")).one()
        owners = set(c.execute(text("SELECT DISTINCT tableowner FROM pg_tables "
                                    "WHERE schemaname = 'public'")).scalars())
        forced = c.execute(text("SELECT bool_and(relforcerowsecurity AND relrowsecurity) "
                                "FROM pg_class WHERE relname = 'model_run'")).scalar()
    assert who == (APP_ROLE, False, False)
    assert APP_ROLE not in owners
    assert forced is True


def test_tenant_cannot_read_or_write_another_tenant(pg_backend: Backend) -> None:
    seed_model(pg_backend.store, tenant="acme")
    seed_model(pg_backend.store, tenant="globex", model="dedup")
    with pg_backend.store.transaction("acme", "x") as tx:
        seen = set(tx.conn.execute(text("SELECT DISTINCT tenant_id FROM model_version"))
                   .scalars())
        assert seen == {"acme"}
        hit = tx.conn.execute(text("UPDATE model_catalog SET description = 'pwned' "
                                   "WHERE tenant_id = 'globex'"))
        assert hit.rowcount == 0
        assert tx.conn.execute(text("SELECT count(*) FROM audit_event WHERE tenant_id = "
                                    "'globex'")).scalar() == 0
    with pytest.raises(StoreError, match="row-level security"), \
            pg_backend.store.transaction("acme", "x") as tx:
        tx.conn.execute(text(
            "INSERT INTO schedule_tick (tenant_id, window_key, result, created_at) "
            "VALUES ('globex', 'w', '{}', now())"))
    # a connection with no tenant set sees nothing at all
    with pg_backend.store.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM model_catalog")).scalar() == 0
    with pg_backend.store.transaction("globex", "y") as tx:
        assert tx.model_names() == ["dedup"]


def test_tenant_setting_ends_at_commit(pg_backend: Backend) -> None:
    seed_model(pg_backend.store)
    engine = create_engine(pg_backend.app_url, pool_size=1, max_overflow=0)
    with engine.begin() as c:
        c.execute(text("SELECT set_config('app.tenant_id', 'acme', true)"))
        assert c.execute(text("SELECT count(*) FROM model_catalog")).scalar() == 1
    with engine.connect() as c:  # the same pooled connection, next transaction
        assert c.execute(text("SELECT count(*) FROM model_catalog")).scalar() == 0
    engine.dispose()


def test_runtime_role_cannot_rewrite_history(pg_backend: Backend) -> None:
    seed_model(pg_backend.store)
    with pytest.raises(StoreError, match="permission denied"), \
            pg_backend.store.transaction("acme", "x") as tx:
        tx.conn.execute(text("DELETE FROM audit_event"))
    with pg_backend.store.transaction("acme", "x") as tx:
        tx.upsert_model(ModelRow("other", "other", "p", "O", spec_hash="h"))


def test_every_role_lists_tenant_names_but_registers_only_its_own(backend: Backend) -> None:
    """Commands that act for every tenant (the chart's schedule-tick CronJob, evaluate,
    status, audit verify) list names from the registry; rows stay isolated."""
    seed_model(backend.store, tenant="acme")
    seed_model(backend.store, tenant="globex", model="dedup")
    assert backend.store.tenants() == ["acme", "globex"]  # as the runtime role on PostgreSQL


def test_tenant_registry_refuses_other_tenants_names(pg_backend: Backend) -> None:
    """The registry is readable by every role, but a tenant registers only itself and
    deletes nobody (row-level security and grants)."""
    seed_model(pg_backend.store, tenant="acme")
    seed_model(pg_backend.store, tenant="globex", model="dedup")
    with pytest.raises(StoreError, match="row-level security"), \
            pg_backend.store.transaction("acme", "x") as tx:
        tx.conn.execute(text("INSERT INTO tenant (tenant_id, created_at) "
                             "VALUES ('initech', now())"))
    with pytest.raises(StoreError, match="permission denied"), \
            pg_backend.store.transaction("acme", "x") as tx:
        tx.conn.execute(text("DELETE FROM tenant WHERE tenant_id = 'globex'"))
    assert pg_backend.store.tenants() == ["acme", "globex"]


def test_schedule_tick_reaches_every_tenant_as_the_runtime_role(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    seed_model(backend.store, tenant="acme")
    seed_model(backend.store, tenant="globex", model="dedup")
    assert main(["schedule-tick", "--store", backend.app_url, "--window-key", "w1",
                 "--output", "json"]) == 0
    out = capsys.readouterr().out
    assert '"acme"' in out and '"globex"' in out
