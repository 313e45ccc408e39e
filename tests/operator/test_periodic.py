"""The periodic driver stops at once when this replica is paused (kopf peering): it reads
the operating flag (`standby.PeeringWatch`, no API call) before each tenant."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from controller.operator.periodic import PeriodicDriver
from tests.stores import Backend


def test_a_replica_paused_in_the_middle_of_a_round_repairs_no_further_tenant() -> None:
    now, ran, asked = [0.0], [], []
    operating = [True]

    def repair(tenant: str) -> None:
        ran.append(tenant)
        if tenant == "t1":  # a higher-priority replica appears: kopf pauses this one
            operating[0] = False

    def active() -> bool:
        asked.append(now[0])
        return operating[0]

    driver = PeriodicDriver(lambda: ["t1", "t2", "t3"], lambda _: None, repair,
                            lambda _: None, interval=10, analysis_interval=1000,
                            active=active, clock=lambda: now[0])
    assert driver.tick() == []  # first seen: nothing due yet
    now[0] = 10
    assert driver.tick() == [("repair", "t1")] and ran == ["t1"]
    now[0] = 11  # still paused: nothing runs, the flag is read again (it costs nothing)
    assert driver.tick() == [] and ran == ["t1"] and asked[-1] == 11
    operating[0], now[0] = True, 12  # operating again: the tenants left run at once
    assert driver.tick() == [("repair", "t2"), ("repair", "t3")]
    assert ran == ["t1", "t2", "t3"]


def test_a_flag_that_cannot_be_read_holds_the_work_back() -> None:
    ran: list[str] = []

    def active() -> bool:
        raise RuntimeError("no answer")

    driver = PeriodicDriver(lambda: ["t"], lambda _: None, ran.append, lambda _: None,
                            interval=10, analysis_interval=10, active=active,
                            clock=lambda: 100.0)
    driver.repaired["t"] = driver.analysed["t"] = 0.0
    assert driver.tick() == [] and ran == []


def test_a_bounded_number_of_tenants_are_repaired_at_once() -> None:
    """`workers=3`: three tenants' repairs meet at a barrier only if they run at the same
    time (one after another, the first would wait out the barrier's timeout and fail);
    each tenant's own runs stay in order (analysis, then repair)."""
    import threading

    barrier = threading.Barrier(3, timeout=5)
    met: list[str] = []
    order: list[tuple[str, str]] = []

    def repair(tenant: str) -> None:
        order.append(("repair", tenant))
        barrier.wait()
        met.append(tenant)

    driver = PeriodicDriver(lambda: ["t1", "t2", "t3"], lambda _: None, repair,
                            lambda t: order.append(("analyse", t)), interval=10,
                            analysis_interval=10, clock=lambda: 100.0, workers=3)
    for tenant in ("t1", "t2", "t3"):
        driver.repaired[tenant] = driver.analysed[tenant] = 0.0
    ran = driver.tick()
    assert sorted(met) == ["t1", "t2", "t3"]
    assert sorted(ran) == sorted([(w, t) for t in ("t1", "t2", "t3")
                                  for w in ("analyse", "repair")])
    for tenant in ("t1", "t2", "t3"):
        assert order.index(("analyse", tenant)) < order.index(("repair", tenant))


class _Runs:
    """What the driver started and finished, per tenant, waited on without polling."""

    def __init__(self) -> None:
        import threading

        self.cond = threading.Condition()
        self.started: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()

    def wrap(self, work: Callable[[str], object]) -> Callable[[str], object]:
        def run(tenant: str) -> object:
            with self.cond:
                self.started[tenant] += 1
            try:
                return work(tenant)
            finally:
                with self.cond:
                    self.ended[tenant] += 1
                    self.cond.notify_all()
        return run

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), (
                f"timed out waiting for {what}: started {dict(self.started)}, "
                f"ended {dict(self.ended)}")


def test_a_tenant_whose_repair_hangs_on_a_row_lock_does_not_hold_back_the_others(
        pg_backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL: acme-cad's repair has a policy change to write and waits on the row
    lock another connection holds on that policy (FOR UPDATE, never released while the
    test looks). globex-cad is still repaired round after round in the other slot;
    acme-cad is not started again while its run waits, and the overrun is logged and
    counted under its name. Once the lock goes, acme-cad's run ends and it is repaired
    again an interval later."""
    import threading

    from prometheus_client import REGISTRY
    from sqlalchemy import text

    from tests.operator.test_handlers import Cluster

    cluster = Cluster(pg_backend.store)
    for ns in ("acme-cad", "globex-cad"):
        cluster.repair(ns)
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    policy["spec"]["weights"] = [{"version": "1.1.0", "weight": 100}]
    policy["metadata"]["generation"] = 2
    runs = _Runs()
    driver = PeriodicDriver(lambda: ["acme-cad", "globex-cad"],
                            cluster.memo["tenants"].finished_at, runs.wrap(cluster.repair),
                            lambda _: None, interval=0.3, analysis_interval=1000, workers=2)
    overruns = ("cadml_operator_periodic_overruns_total", {"tenant": "acme-cad"})
    overran_before = REGISTRY.get_sample_value(*overruns) or 0.0
    stop = threading.Event()

    def rounds() -> None:  # the driver's loop (`run`), without an event loop
        while not stop.is_set():
            driver.tick()
            stop.wait(driver.step)

    locker = pg_backend.admin.connect()
    held = locker.begin()
    locker.execute(text("SELECT 1 FROM model_rollout_policy WHERE tenant_id = 'acme-cad' "
                        "AND name = 'part-similarity' FOR UPDATE"))
    loop = threading.Thread(target=rounds, daemon=True)
    loop.start()
    try:
        try:
            runs.wait("acme-cad's repair to start", lambda: runs.started["acme-cad"] == 1)
            base = runs.ended["globex-cad"]
            runs.wait("globex-cad repaired in three more rounds",
                      lambda: runs.ended["globex-cad"] >= base + 3)
            assert runs.started["acme-cad"] == 1 and runs.ended["acme-cad"] == 0
            assert (REGISTRY.get_sample_value(*overruns) or 0.0) == overran_before + 1
            assert any("acme-cad" in r.getMessage() and "interval" in r.getMessage()
                       for r in caplog.records), [r.getMessage() for r in caplog.records]
        finally:
            held.rollback()
            locker.close()
        runs.wait("acme-cad's run to end and a later one to start",
                  lambda: runs.ended["acme-cad"] >= 1 and runs.started["acme-cad"] >= 2)
        assert cluster.bodies[("RolloutPolicy", "part-similarity")]["status"][
            "routingSummary"] == "1.1.0=100"  # the hung run did its work once let go
    finally:
        stop.set()
        loop.join(30)
