"""JSON for the worker's hot path: orjson when installed (the `fast` extra), else json.

On a search request, encoding the answer with json cost more than the search (≈50 µs vs
≈4 µs with orjson, bench/worker_bench.py). Both functions keep json's results: a body
orjson refuses (NaN, lone surrogates, integers beyond 64 bits) is decoded again by json,
which accepts or rejects it as before; an answer orjson cannot encode is encoded by json.
Where orjson would read a valid body differently it is not asked: integers of 19 digits
or more (orjson makes floats of those beyond 64 bits) and nesting deeper than json's
recursion limit allows (orjson reads it; json refuses) — a body with such digit runs or
more than ORJSON_MAX_BRACKETS brackets is read by json.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # optional: json alone gives the same answers, slower
        return None


orjson = _optional("orjson")
ORJSON_MAX_BRACKETS = 64
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _json_dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def dumps(body: Any) -> bytes:
    """`body` as compact JSON (UTF-8)."""
    if orjson is not None:
        try:
            encoded: bytes = orjson.dumps(body)
            return encoded
        except TypeError:  # a type orjson does not take (non-str keys, …): json's way
            pass
    return _json_dumps(body)


def loads(raw: bytes) -> Any:
    """JSON text as Python values, exactly as json.loads reads it (and raises)."""
    if orjson is not None and raw.count(b"[") + raw.count(b"{") <= ORJSON_MAX_BRACKETS \
            and _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # maybe valid for json (NaN, …): let json decide
            pass
    return json.loads(raw)
