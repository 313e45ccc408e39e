"""The operator's periodic work, one run per tenant per interval, not one per object.

`PeriodicDriver` is a single operator-level loop: every tenant the indexes know is
repaired (passed again, its statuses and workers compared) once no pass of it has
finished within the repair interval, and its canaries analysed once per analysis
interval. A tenant of five objects costs one run an interval; a run that finds nothing
to change makes no API write. The decision (`due`) is pure; the work
itself is handed in as callables (the kopf wiring in `handlers`), so nothing here
knows kopf or the store.

kopf pauses its watchers and handlers on a standby replica (peering); this loop is
not kopf's, so it asks `active()` before each tenant: a flag the wiring keeps from the
peering object by kopf's own rule (`standby.PeeringWatch`), read without an API call, so
a replica paused in the middle of a round repairs no further tenant.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable

from controller import metrics

logger = logging.getLogger(__name__)


def due(tenants: Iterable[str], last: Callable[[str], float | None], now: float,
        interval: float) -> list[str]:
    """The tenants whose last run (`last`, None: never) is at least `interval` old."""
    out = []
    for tenant in sorted(set(tenants)):
        at = last(tenant)
        if at is None or now - at >= interval:
            out.append(tenant)
    return out


Runs = list[tuple[str, Callable[[str], object], dict[str, float]]]  # (work, run, memory)


class PeriodicDriver:
    """Runs `repair(tenant)` and `analyse(tenant)` for the tenants that are due.
    `finished(tenant)`: when a pass of the tenant last finished (any cause: an event's
    pass counts as a repair). Each call's own start counts too, so a tenant whose repair
    fails is retried an interval later, not at every tick. A tenant is first due an
    interval after the driver first sees it (its create or resume event passes it).

    Up to `workers` tenants run at once, each in a slot of its own (a daemon thread); a
    round waits for its runs at most an interval. A run still going then (a store or API
    call that hangs: a row lock held elsewhere) keeps its slot and is logged and counted
    under its tenant's name (`cadml_operator_periodic_overruns_total`); the tenant is not
    started again until it ends, and the other tenants go on in the slots left."""

    def __init__(self, tenants: Callable[[], Iterable[str]],
                 finished: Callable[[str], float | None],
                 repair: Callable[[str], object], analyse: Callable[[str], object],
                 interval: float, analysis_interval: float,
                 active: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic, workers: int = 1) -> None:
        self.tenants, self.finished = tenants, finished
        self.repair, self.analyse, self.active = repair, analyse, active
        self.interval, self.analysis_interval, self.clock = interval, analysis_interval, clock
        self.workers = max(1, workers)  # tenants run at once (each tenant's runs in order)
        self.repaired: dict[str, float] = {}
        self.analysed: dict[str, float] = {}
        self.running: dict[str, float] = {}  # tenant → when its run still going started
        self._overran: set[str] = set()  # running tenants already reported
        self._lock = threading.Lock()  # the four above, shared with the slots

    def _last_repair(self, tenant: str) -> float | None:
        times = [t for t in (self.finished(tenant), self.repaired.get(tenant)) if t is not None]
        return max(times) if times else None

    def tick(self) -> list[tuple[str, str]]:
        """One round: the (work, tenant) pairs run. A failure ends only its own run.
        Whether this replica may operate is asked before each run (a flag, cheap): once
        it may not, the round ends and what is left stays due. A tenant whose previous
        run is still going is left out; the round waits for its own runs at most an
        interval (real seconds), and reports the runs still going then."""
        now = self.clock()
        tenants = list(self.tenants())
        known = set(tenants)
        with self._lock:
            for memory in (self.repaired, self.analysed):  # tenants gone: forget them
                for gone in [t for t in memory if t not in known]:
                    memory.pop(gone, None)
            # first seen: its create or resume event passes it; the driver an interval later
            for tenant in known - set(self.repaired):
                self.repaired[tenant] = self.analysed[tenant] = now
            self._report_overruns(now)
            busy = set(self.running)
            work = [("analyse", self.analyse, self.analysed, t)
                    for t in due(tenants, self.analysed.get, now, self.analysis_interval)]
            work += [("repair", self.repair, self.repaired, t)
                     for t in due(tenants, self._last_repair, now, self.interval)]
            slots = self.workers - len(busy)
        by_tenant: dict[str, Runs] = {}
        for name, run, memory, tenant in work:
            if tenant not in busy:
                by_tenant.setdefault(tenant, []).append((name, run, memory))
        if not by_tenant or slots < 1:
            return []
        return self._round(by_tenant, slots)

    def _round(self, by_tenant: dict[str, Runs], slots: int) -> list[tuple[str, str]]:
        """Run the tenants in up to `slots` threads, each taking the next tenant left; wait
        an interval at most. Tenants not taken by then stay due for the next round."""
        order = list(by_tenant)
        left = list(reversed(order))
        done: dict[str, list[tuple[str, str]]] = {}
        closed = threading.Event()
        finished = threading.Condition(self._lock)

        def slot() -> None:
            while True:
                with self._lock:
                    if closed.is_set() or not left:
                        return
                    tenant = left.pop()
                    self.running[tenant] = self.clock()
                ran: list[tuple[str, str]] = []
                try:
                    ran = self._run_tenant(tenant, by_tenant[tenant])
                finally:
                    with finished:
                        started = self.running.pop(tenant, None)
                        if tenant in self._overran:
                            self._overran.discard(tenant)
                            logger.warning("periodic run of tenant %s ended after %.1f s",
                                           tenant, self.clock() - (started or 0.0))
                        done[tenant] = ran
                        finished.notify_all()

        for i in range(min(slots, len(order))):
            threading.Thread(target=slot, name=f"cadml-periodic-{i}", daemon=True).start()
        with finished:
            finished.wait_for(lambda: len(done) == len(order), timeout=self.interval)
            closed.set()  # a slot still going takes no further tenant of this round
            self._report_overruns(self.clock())
            return [pair for tenant in order for pair in done.get(tenant, [])]

    def _report_overruns(self, now: float) -> None:
        """Log and count, once each, the runs still going an interval after they started
        (the lock held)."""
        for tenant, started in sorted(self.running.items()):
            if tenant not in self._overran and now - started >= self.interval:
                self._overran.add(tenant)
                metrics.OPERATOR_PERIODIC_OVERRUNS.labels(tenant).inc()
                logger.warning(
                    "periodic run of tenant %s still going after %.1f s, longer than the "
                    "interval (%.1f s): it holds one of %d slots and is not started again "
                    "until it ends", tenant, now - started, self.interval, self.workers)

    def _run_tenant(self, tenant: str, runs: Runs) -> list[tuple[str, str]]:
        ran = []
        for name, run, memory in runs:
            if not self._operating():
                break
            with self._lock:
                memory[tenant] = self.clock()
            try:
                run(tenant)
            except Exception:  # the next interval tries again; others go on
                logger.warning("periodic %s of tenant %s failed", name, tenant, exc_info=True)
            ran.append((name, tenant))
        return ran

    def _operating(self) -> bool:
        try:
            return self.active()
        except Exception:  # cannot tell: do not act (kopf's pause decides handlers)
            logger.warning("peering state unknown; periodic work postponed", exc_info=True)
            return False

    @property
    def step(self) -> float:
        """Seconds between rounds: a tenant is run at most this late."""
        return max(0.2, min(self.interval, self.analysis_interval) / 10)

    async def run(self) -> None:
        """Forever (until cancelled): a round every `step` seconds, in a thread (store
        and API calls block)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.step)
            started = time.monotonic()
            try:
                ran = await loop.run_in_executor(None, self.tick)
            except Exception:  # the only periodic loop: one failed round must not end it
                logger.warning("periodic round failed; next round in %.1fs", self.step,
                               exc_info=True)
                ran = []
            if ran:  # the round's cost, in the log
                logger.info("periodic round: %d runs of %d tenants in %.2f s", len(ran),
                            len({tenant for _, tenant in ran}), time.monotonic() - started)
