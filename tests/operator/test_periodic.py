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
