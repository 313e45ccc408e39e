"""The worker's structured log: one JSON line per event (policy applied, version loaded /
failed / degraded / recovered, review, binding), requests at debug.

`emit(name, **fields)` logs on `cadml.worker.events` with the fields attached to the
record (`record.event`, `record.fields`); `JsonLines` renders such a record as one JSON
object per line (`cadml worker` installs it), so a log pipeline needs no parsing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

EVENTS = logging.getLogger("cadml.worker.events")


def emit(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; cheap when the level is off (request logs are at debug)."""
    if EVENTS.isEnabledFor(level):
        EVENTS.log(level, "%s %s", name, fields, extra={"event": name, "fields": fields})


class JsonLines(logging.Formatter):
    """Any record as one JSON line: time, level, logger, event (or message), its fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(), "logger": record.name}
        event = getattr(record, "event", None)
        if event is not None:
            body["event"] = event
            body.update(getattr(record, "fields", {}))
        else:
            body["message"] = record.getMessage()
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, sort_keys=False)
