"""Bound jobs counted with their versions (`model_version.bound_jobs`, migration 0017):
what a reconcile pass reads for the RolloutPolicy's suspendedBindings instead of counting
every job ever bound. Both engines."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, text

from controller.store import Store
from controller.store.migrate import upgrade
from tests.store.helpers import seed_model
from tests.store.test_migrations import empty_engine

__all__ = ["empty_engine"]  # the fixture, shared


def test_bound_job_counts_follow_binds_moves_and_unbinds(store: Store) -> None:
    """`model_version.bound_jobs` (what a pass reads for suspendedBindings) equals a fresh
    count of the live bindings after every kind of change."""
    seed_model(store)
    steps: list[tuple[str, str | None]] = [
        ("a", "part-sim-1.1.0"), ("b", "part-sim-1.1.0"), ("a", "part-sim-1.1.0"),  # again
        ("b", "part-sim-1.0.0"),  # moved
        ("a", None), ("a", "part-sim-1.0.0"),  # unbound, then bound anew
        ("c", "part-sim-1.1.0"), ("c", None)]
    for job, version in steps:
        with store.transaction("acme", "worker") as tx:
            if version is None:
                tx.unbind_job(job)
            else:
                tx.bind_job(job, version, {})
    with store.read("acme") as tx:
        assert tx.bound_jobs() == {"part-sim": {"1.0.0": 2}}
        assert tx.observe().bindings == {"part-sim": {"1.0.0": 2}}


def test_the_migration_counts_the_bindings_already_there(empty_engine: Engine) -> None:
    upgrade(empty_engine)  # seeded by today's code; the column is then taken out, and
    seed_model(Store(empty_engine))  # migration 0017 run again (later ones need today's)
    with empty_engine.begin() as c:
        ids = dict(c.execute(text("SELECT version, id FROM model_version")).all())
        for job, version, unbound in (("a", "1.1.0", False), ("b", "1.1.0", False),
                                      ("c", "1.1.0", True), ("d", "1.0.0", False)):
            c.execute(text(
                "INSERT INTO ai_analysis_jobs (tenant_id, job_key, model_version_id, "
                "runtime_snapshot, created_at, updated_seq, unbound) VALUES ('acme', :j, :v, "
                "'{}', :at, 1, :u)"), {"j": job, "v": ids[version], "at": datetime.now(UTC),
                                       "u": unbound})
        c.execute(text("ALTER TABLE model_version DROP COLUMN bound_jobs"))
        with Operations.context(MigrationContext.configure(c)):
            importlib.import_module(
                "controller.store.migrations.versions.0017_bound_job_counts").upgrade()
    with Store(empty_engine).read("acme") as tx:
        assert tx.bound_jobs() == {"part-sim": {"1.0.0": 1, "1.1.0": 2}}
