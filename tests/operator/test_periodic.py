"""The periodic driver stops at once when this replica is paused (kopf peering): it reads
the operating flag (`standby.PeeringWatch`, no API call) before each tenant."""

from __future__ import annotations

from controller.operator.periodic import PeriodicDriver


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
