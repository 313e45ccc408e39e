"""Policy-change notifications: PostgreSQL LISTEN/NOTIFY, so workers refresh at once.

`StoreTx.publish_snapshot` and `StoreTx.bind_job` send a NOTIFY on the model's
channel inside their own transaction; PostgreSQL delivers it at COMMIT and never
for a rolled-back transaction, so a woken worker always finds the new rows.

Channels are per (tenant, model) and named by a digest, so a listener learns
nothing about other tenants' models, and the payload is only the new policy
version (or "binding"). A notification is a hint to refresh sooner, never the data
itself: a worker still reads the snapshot through its tenant-scoped transaction
(row-level security), and keeps its polling probe as the safety net, because
notifications sent while a listener reconnects are lost.

SQLite cannot notify: `Store.listen` returns None there and workers keep polling.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger("cadml.store.notify")

RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)


def channel(tenant: str, model: str) -> str:
    """The LISTEN/NOTIFY channel of one tenant's model (a valid, unquoted identifier)."""
    return "cadml_policy_" + hashlib.sha256(f"{tenant}/{model}".encode()).hexdigest()[:32]


class PolicyListener:
    """One dedicated PostgreSQL connection LISTENing on one channel, in its own thread.

    `on_notify(payload)` is called from that thread for every notification, and with
    payload "" after each (re)connect, since anything sent while disconnected is lost.
    """

    def __init__(self, engine: Engine, channel_name: str,
                 on_notify: Callable[[str], None], *, wait_seconds: float = 0.5) -> None:
        self.engine = engine
        self.channel = channel_name
        self.on_notify = on_notify
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen-{channel_name}",
                                        daemon=True)

    def start(self) -> PolicyListener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _connect(self) -> Any:
        raw = self.engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()  # ours alone for as long as we listen; never back to the pool
        if conn is None:
            raise RuntimeError("the store engine gave no driver connection")
        conn.rollback()
        conn.autocommit = True
        conn.execute(f"LISTEN {self.channel}")
        return conn

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                failures = 0
                self.on_notify("")
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=self.wait_seconds):
                        self.on_notify(str(note.payload))
            except Exception as exc:  # the database went away: poll meanwhile, reconnect
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("policy notifications on %s lost (%s); reconnecting in %.1f s",
                            self.channel, str(exc).splitlines()[0] if str(exc) else
                            type(exc).__name__, delay)
                self._stop.wait(delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):  # already broken
                        conn.close()
