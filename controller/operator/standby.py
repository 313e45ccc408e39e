"""Whether this replica operates, as a flag, and a standby's eye on a holder that died.

kopf pauses a replica while a live peer of a higher or equal priority is recorded in the
peering object, and keeps its pause flag to itself. `PeeringWatch` reads the peering
object(s) (one GET each, whatever the number of tenants: every 3 s while paused, every
`HEARTBEAT_SECONDS` while operating) and keeps `operating`, which the periodic driver
reads before each tenant without an API call: a replica paused mid-round stops within
5 s. While operating it refreshes its own record each time (the heartbeat: kopf's
keep-alive comes every 50-55 s), alone too: a replacement pod arriving while this one
is cut off from its kubelet (its Pod deleted, its process running) must find the record
fresh, or it would remove it at start and two replicas would operate. While paused,
it removes the records of the peers that pause it that are gone: pod gone and record no
longer refreshed (the decision: `peers.gone_blockers`). kopf's own peering watch sees
the removal and resumes at once, instead of waiting up to the record's lifetime (60 s)
for a SIGKILLed replica; a replica that still runs, whatever its pod, is never removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from controller.operator import kube
from controller.operator.peers import HEARTBEAT_SECONDS, gone_blockers, peers_allow

logger = logging.getLogger(__name__)


class PeeringWatch:
    """`check()` once (blocking: API calls); `run()` forever; calling it answers the
    last check's verdict (False until the first, and when the peering cannot be read:
    kopf's pause decides the handlers, this only holds back the periodic work)."""

    def __init__(self, peering: kube.Peering, identity: str, priority: int,
                 every: float = 3.0, every_operating: float = 10.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.peering, self.identity, self.priority = peering, identity, priority
        self.every, self.every_operating, self.clock = every, every_operating, clock
        self.operating = False
        self.heartbeat = False  # operating beside another peer: its record refreshed

    def __call__(self) -> bool:
        return self.operating

    def check(self) -> bool:
        allowed, heartbeat = True, False
        try:
            for namespace, status in self.peering.statuses():
                now = self.clock()
                gone = gone_blockers(status, self.identity, self.priority, now,
                                     self.peering.pod_uid)
                if gone:
                    self.peering.remove(namespace, gone)
                    logger.info("the peers pausing this replica are gone (their pods no "
                                "longer exist and their records are stale): removed %s", gone)
                left = {k: v for k, v in status.items() if k not in gone}
                here = peers_allow(left, self.identity, self.priority, now)
                allowed = allowed and here
                mine = left.get(self.identity)
                if here and isinstance(mine, dict):
                    # peers remove only records not refreshed lately: say this one runs
                    # (alone too: a replacement pod may arrive while this Pod is gone)
                    if not self.peering.touch(namespace, self.identity,
                                              {**mine, "lastseen": now.isoformat()}):
                        # the object moved since the read (kopf removed this record at
                        # shutdown, a peer wrote): never put a removed record back
                        logger.debug("peering changed since it was read: heartbeat skipped")
                    heartbeat = True
        except Exception:  # any client error: not operating until the next answer
            logger.warning("peering not readable; periodic work held back", exc_info=True)
            allowed = False
        self.operating, self.heartbeat = allowed, allowed and heartbeat
        return allowed

    async def run(self) -> None:
        """Forever (until cancelled): a check every `every` seconds while paused (the
        holder may die), every `HEARTBEAT_SECONDS` while operating (its heartbeat), else
        (operating, its record not readable) every `every_operating`, in a thread."""
        loop = asyncio.get_running_loop()
        while True:
            operating = await loop.run_in_executor(None, self.check)
            await asyncio.sleep(min(self.every_operating, HEARTBEAT_SECONDS)
                                if self.heartbeat else
                                self.every_operating if operating else self.every)
