"""Migrations: empty database to head, previous revision with data to head without loss,
and the migrated schema equals the table definitions the code uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError

from controller.store.engine import make_engine
from controller.store.migrate import current_revision, head_revision, upgrade
from controller.store.tables import metadata
from tests.stores import PG_URL, drop_pg_database, new_pg_database, pg_required


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield engine
        engine.dispose()
        return
    pg_required()
    name = new_pg_database(None)
    engine = make_engine(make_url(PG_URL).set(database=name).render_as_string(False))
    yield engine
    engine.dispose()
    drop_pg_database(name)


def test_empty_database_upgrades_to_head(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision() == "0019"
    upgrade(empty_engine)  # again: nothing to do
    assert current_revision(empty_engine) == "0019"


def test_migrated_schema_matches_the_table_definitions(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(ctx, metadata)
                 if not (isinstance(d, tuple) and d[0] == "remove_table"
                         and d[1].name == "alembic_version")]
    assert diffs == []


def _seed_at_0001(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO model_catalog (tenant_id, name, model_key, provider, display_name, "
            "description, threshold_defaults, review_control_allowed, review_default_decision, "
            "worker_replicas, generation, spec_hash, deleted, created_at, updated_at) VALUES "
            "('acme', 'part-sim', 'part-sim-key', 'p', 'P', '', '{}', false, 'PENDING_REVIEW', "
            "1, 1, 'h', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        model_id = c.execute(text("SELECT id FROM model_catalog")).scalar()
        for name, version, stage in (("v1", "1.0.0", "DEPRECATED"), ("v2", "1.1.0", "STABLE"),
                                     ("v3", "1.2.0", "CANARY")):
            c.execute(text(
                "INSERT INTO model_version (tenant_id, model_id, name, version, stage, "
                "artifact_uri, artifact_sha256, artifact_format, feature_version, "
                "threshold_defaults, generation, spec_hash, deleted, created_at, updated_at) "
                f"VALUES ('acme', {model_id}, '{name}', '{version}', '{stage}', 's3://x', "
                f"'{'a' * 64}', 'npz', 'v4', '{{}}', 1, 'h', false, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"))


def test_previous_revision_with_data_upgrades_without_loss(empty_engine: Engine) -> None:
    upgrade(empty_engine, "0001")
    _seed_at_0001(empty_engine)
    upgrade(empty_engine)
    with empty_engine.connect() as c:
        rows = c.execute(text("SELECT name, stage, model_key FROM model_version ORDER BY name"))
        assert [tuple(r) for r in rows] == [("v1", "DEPRECATED", "part-sim-key"),
                                            ("v2", "STABLE", "part-sim-key"),
                                            ("v3", "CANARY", "part-sim-key")]
    # and the rule is now enforced
    with pytest.raises(IntegrityError, match=r"(?i)unique"), empty_engine.begin() as c:
        c.execute(text("UPDATE model_version SET stage = 'STABLE' WHERE name = 'v3'"))


def test_backfill_refuses_data_that_breaks_the_new_rule(empty_engine: Engine) -> None:
    upgrade(empty_engine, "0001")
    _seed_at_0001(empty_engine)
    with empty_engine.begin() as c:
        c.execute(text("UPDATE model_version SET stage = 'STABLE' WHERE name = 'v3'"))
    with pytest.raises(RuntimeError, match="acme/part-sim-key"):
        upgrade(empty_engine)
    assert current_revision(empty_engine) == "0001"  # nothing half-applied


def _seed_analysis_at_0008(engine: Engine) -> None:
    """A policy `part-sim-policy` with an aborted canary, and a row of a policy since renamed."""
    from controller.store import Store

    with Store(engine).transaction("acme", "seed") as tx:
        model_id = tx.conn.execute(text("SELECT id FROM model_catalog")).scalar()
        tx.conn.execute(text(
            "INSERT INTO model_rollout_policy (tenant_id, model_id, name, spec, refresh_seconds, "
            "policy_version, generation, spec_hash, deleted, created_at, updated_at) VALUES "
            f"('acme', {model_id}, 'part-sim-policy', '{{}}', 5, 2, 1, 'h', false, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        for policy, version in (("part-sim-policy", "1.2.0"), ("renamed-away", "1.2.0")):
            tx.conn.execute(text(
                "INSERT INTO canary_analysis (tenant_id, policy_name, version, spec_hash, "
                "failures, aborted, verdicts, updated_at) VALUES ('acme', :p, :v, 'h', 2, "
                "true, :verdicts, CURRENT_TIMESTAMP)"), {
                "p": policy, "v": version, "verdicts": json.dumps(
                    {"overall": "Fail", "summary": "success_rate 0.5 vs min 0.9: Fail",
                     "verdicts": [{"metric": "success_rate", "result": "Fail"}],
                     "at": "2026-11-22T12:00:00+00:00"})})


def _analysis_after_upgrade(engine: Engine) -> list[Any]:
    from controller.store import Store

    with Store(engine).transaction("acme", "t") as tx:
        return tx.analysis_states().get("part-sim", [])


def test_canary_analysis_moves_to_state_keyed_by_model(empty_engine: Engine) -> None:
    """0010 keys analysis by (model, version, spec hash): an existing row keeps its abort,
    its model taken from the policy row; its verdict becomes its one measurement."""
    upgrade(empty_engine, "0001")
    _seed_at_0001(empty_engine)
    upgrade(empty_engine, "0008")
    _seed_analysis_at_0008(empty_engine)
    upgrade(empty_engine)
    (state,) = _analysis_after_upgrade(empty_engine)
    assert (state.version, state.spec_hash, state.failures, state.aborted) == (
        "1.2.0", "h", 2, True)
    (measured,) = state.measurements
    assert measured["overall"] == "Fail" and measured["consecutiveFailures"] == 2
    assert measured["at"] == "2026-11-22T12:00:00+00:00"


def test_embedded_default_creates_and_upgrades_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main

    monkeypatch.setenv("CADML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CADML_STORE_URL", raising=False)
    assert main(["audit", "verify"]) == 2  # reads only: a missing store is not created
    assert not (tmp_path / "home").exists()
    assert "cadml db upgrade" in capsys.readouterr().err
    assert main(["schedule-tick", "--window-key", "k"]) == 0  # a writer creates it
    assert (tmp_path / "home" / "cadml.db").exists()
    assert main(["audit", "verify"]) == 0
    assert main(["db", "current"]) == 0
    assert "0019" in capsys.readouterr().out


@contextmanager
def _owned_database() -> Iterator[tuple[URL, Engine]]:
    """A fresh PostgreSQL database owned by a plain role (no superuser, no BYPASSRLS), as in
    production: FORCE ROW LEVEL SECURITY applies to its owner. Its URL and an engine."""
    from tests.stores import _admin

    pg_required()
    owner = "cadml_owner_t"
    name = new_pg_database(None)
    admin = _admin()
    with admin.connect() as c:
        c.execute(text(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                       f"'{owner}') THEN CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; "
                       "END IF; END $$"))
        c.execute(text(f"ALTER DATABASE {name} OWNER TO {owner}"))
    admin.dispose()
    url = make_url(PG_URL).set(database=name, username=owner, password=None)
    engine = make_engine(url.render_as_string(False))
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_pg_database(name)


def test_tenant_registry_is_backfilled_by_an_owner_that_is_not_superuser() -> None:
    """0008 copies tenant names out of `audit_head`, which FORCE ROW LEVEL SECURITY hides
    even from its owner; the migration must still see every tenant. Run as a plain owner
    role, as in production (the tests' admin is a superuser, which RLS never applies to)."""
    from sqlalchemy import create_engine

    from controller.store import Store

    with _owned_database() as (url, engine):
        upgrade(engine, "0007", app_role="nobody_here")
        store = Store(engine)
        for tenant in ("acme", "globex"):
            with store.transaction(tenant, "seed") as tx:
                tx.conn.execute(text("INSERT INTO audit_head (tenant_id, seq, hash) "
                                     "VALUES (:t, 0, :h)"), {"t": tenant, "h": "0" * 64})
        plain = create_engine(url.render_as_string(False))
        with plain.connect() as c:  # the owner itself sees no head row without a tenant set
            assert c.execute(text("SELECT count(*) FROM audit_head")).scalar() == 0
        plain.dispose()
        upgrade(engine, app_role="nobody_here")
        assert store.tenants() == ["acme", "globex"]


def test_db_upgrade_grants_a_runtime_role_created_later(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The grants in the migrations skip a role that does not exist yet; `cadml db upgrade`
    grants it once it does, and refuses roles row-level security would not apply to."""
    from controller.cli import main
    from controller.store import Store
    from tests.stores import _admin

    pg_required()
    role = "cadml_late_t"
    name = new_pg_database(None)
    admin = _admin()
    with admin.connect() as c:
        c.execute(text(f"DROP ROLE IF EXISTS {role}"))
    url = make_url(PG_URL).set(database=name)
    try:
        assert main(["db", "upgrade", "--store", url.render_as_string(False),
                     "--app-role", role]) == 2  # the schema is there; the role is not
        assert "does not exist" in capsys.readouterr().err
        with admin.connect() as c:
            c.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        assert main(["db", "upgrade", "--store", url.render_as_string(False),
                     "--app-role", role]) == 0
        assert f"runtime role {role}: granted" in capsys.readouterr().out
        store = Store(make_engine(url.set(username=role, password=None)
                                  .render_as_string(False)))
        try:
            from tests.store.helpers import seed_model

            seed_model(store)  # writes rows, a snapshot and audit events as that role
            assert store.tenants() == ["acme"] and store.verify_audit("acme") is None
        finally:
            store.dispose()
        assert main(["db", "upgrade", "--store", url.render_as_string(False),
                     "--app-role", "postgres"]) == 2
        assert "row-level security would not apply" in capsys.readouterr().err
    finally:
        drop_pg_database(name)
        with admin.connect() as c:
            c.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_canary_analysis_is_copied_by_an_owner_that_is_not_superuser() -> None:
    """FORCE ROW LEVEL SECURITY hides `canary_analysis` from its owner: 0010 must still
    copy every row (run as a plain owner role, as in production)."""
    with _owned_database() as (_, engine):
        upgrade(engine, "0001", app_role="nobody_here")
        _seed_at_0001(engine)
        upgrade(engine, "0008", app_role="nobody_here")
        _seed_analysis_at_0008(engine)
        upgrade(engine, app_role="nobody_here")
        (state,) = _analysis_after_upgrade(engine)
        assert state.aborted and state.failures == 2
