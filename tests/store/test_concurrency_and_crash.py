"""Under concurrency and faults: one promotion wins, a killed writer loses nothing committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from controller.errors import ConflictError
from controller.records import RouteRow, VersionRow
from controller.store import Store
from tests.store.helpers import seed_model
from tests.stores import Backend


def _promote(store: Store, version: str, barrier: threading.Barrier,
             results: dict[str, str]) -> None:
    """Deprecate the old STABLE and make `version` STABLE, with a new snapshot and audit row."""
    try:
        with store.transaction("acme", f"promoter-{version}") as tx:
            barrier.wait(timeout=10)
            tx.set_stage("part-sim-1.0.0", "DEPRECATED")
            tx.set_stage(f"part-sim-{version}", "STABLE")
            tx.publish_snapshot("part-sim", [RouteRow(version, 100, True)], {}, "policy")
            tx.audit("promote", "ModelVersion", f"part-sim-{version}")
            time.sleep(0.2)  # hold the transaction open so the rival overlaps it
        results[version] = "won"
    except ConflictError as exc:
        results[version] = f"conflict: {exc}"
    except Exception as exc:  # any other outcome fails the test below
        results[version] = f"{type(exc).__name__}: {exc}"


def test_two_concurrent_promotions_exactly_one_wins(backend: Backend) -> None:
    store = backend.store
    seed_model(store, canary="1.1.0")
    with store.transaction("acme", "seed") as tx:
        tx.upsert_version(VersionRow("part-sim-1.2.0", "part-sim", "1.2.0", "CANARY",
                                     "s3://b/d", "npz", "c" * 64, spec_hash="v3"))
    # SQLite serialises writers (BEGIN IMMEDIATE): the second waits, then conflicts on the
    # unique index because the first already made its version STABLE. PostgreSQL's row
    # locks make the second wait the same way.
    barrier = threading.Barrier(2) if backend.kind == "postgresql" else _NoBarrier()
    results: dict[str, str] = {}
    threads = [threading.Thread(target=_promote, args=(store, v, barrier, results))
               for v in ("1.1.0", "1.2.0")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    outcomes = sorted(results.values())
    assert len(outcomes) == 2 and outcomes[1] == "won", results
    assert outcomes[0].startswith("conflict:"), results
    assert "STABLE" in outcomes[0]
    winner = next(v for v, r in results.items() if r == "won")
    with store.transaction("acme", "check") as tx:
        stages = {v.version: v.stage for v in tx.versions("part-sim")}
        assert [v for v, s in stages.items() if s == "STABLE"] == [winner]
        assert stages["1.0.0"] == "DEPRECATED"
        snap = tx.snapshot("part-sim")
        assert snap is not None and snap.policy_version == 2 and snap.stable_version == winner
        assert [e.action for e in tx.audit_events()] == ["create", "publish", "promote"]
        assert tx.verify_audit() is None


class _NoBarrier(threading.Barrier):
    def __init__(self) -> None:
        super().__init__(1)

    def wait(self, timeout: float | None = None) -> int:
        return 0


_WRITER = textwrap.dedent("""
    import sys, time
    from controller.store import Store
    from controller.records import RunRecord
    store = Store.open(sys.argv[1])
    with store.transaction("acme", "writer") as tx:
        tx.record_runs([RunRecord("part-sim", "1.0.0", 1, "policy", {}, 5.0, True, True)
                        for _ in range(500)])
        tx.set_stage("part-sim-1.1.0", "DRAFT")
        tx.audit("reconcile", "RolloutPolicy", "part-sim", {"half": True})
        print("in-transaction", flush=True)
        time.sleep(60)
""")


def test_killed_writer_loses_nothing_committed_and_leaves_nothing_partial(
    backend: Backend,
) -> None:
    store = backend.store
    seed_model(store)
    with store.transaction("acme", "before") as tx:
        from controller.records import RunRecord
        tx.record_runs([RunRecord("part-sim", "1.0.0", 1, "policy", {}, 3.0, True, True)])
        tx.audit("run", "Model", "part-sim")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, backend.app_url],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "in-transaction"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    with store.transaction("acme", "after") as tx:
        assert tx.count_runs() == 1
        assert {v.version: v.stage for v in tx.versions("part-sim")}["1.1.0"] == "CANARY"
        assert [e.action for e in tx.audit_events()] == ["create", "publish", "run"]
        assert tx.verify_audit() is None
        # and the store still takes writes after the crash
        tx.audit("after-crash", "Model", "part-sim")


@pytest.mark.parametrize("kind", ["Model"])
def test_failed_step_writes_neither_rows_nor_audit(store: Store, kind: str) -> None:
    seed_model(store)
    with pytest.raises(ConflictError), store.transaction("acme", "bad") as tx:
        tx.audit("promote", kind, "part-sim")
        tx.set_stage("part-sim-1.1.0", "STABLE")  # second STABLE: refused by the index
    with store.transaction("acme", "check") as tx:
        assert [e.action for e in tx.audit_events()] == ["create", "publish"]
