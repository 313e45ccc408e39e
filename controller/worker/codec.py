"""JSON for the worker's hot path: orjson when installed (the `fast` extra), else json.

On a search request, encoding the answer with json cost more than the search (≈50 µs vs
≈4 µs with orjson, bench/worker_bench.py). `loads` keeps json's results: a body
orjson refuses (NaN, lone surrogates, integers beyond 64 bits) is decoded again by json,
which accepts or rejects it as before. Where orjson would read a valid body differently
it is not asked: integers of 19 digits or more (orjson makes floats of those beyond 64
bits) and nesting deeper than json's recursion limit allows (orjson reads it; json
refuses) — a body with such digit runs or more than ORJSON_MAX_BRACKETS brackets is read
by json.

`dumps` writes the same bytes whichever is installed, and always valid JSON (RFC 8259):
orjson's own output where orjson takes the value. Without orjson (or for a value it
refuses) json's C encoder writes the body when its text is orjson's, which is whenever
no float in it needs an exponent and none is NaN or infinite; otherwise `_Encoder`
(pure Python, written to orjson's rules) does. The rules: UTF-8 text with only the
quote, the backslash and control characters escaped (a lone surrogate, which UTF-8
cannot hold, makes the whole body ASCII escapes), floats in their shortest round-trip
digits as orjson spells them (`1e-7`, `1e16`, `0.00001`), and NaN or Infinity as `null`
(json would write `NaN`: not JSON). It takes what json takes (dicts, lists, tuples,
str, int, float, bool, None and their subclasses; int, float, bool and None keys as
strings) plus what orjson takes without options: UUIDs (as text) and enums (as their
value). Anything else is a TypeError either way, dates and dataclasses included (orjson
would encode them; json would not), and a circular structure is a ValueError.
"""

from __future__ import annotations

import enum
import importlib
import json
import math
import uuid
from collections.abc import Callable
from typing import Any


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # optional: json alone gives the same answers, slower
        return None


orjson = _optional("orjson")
ORJSON_MAX_BRACKETS = 64
# a run of 19 digits: every digit made "0", then one substring search (a regular
# expression restarts at each digit of each float: 10-17 µs for a 24-float query vector)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


def long_digits(raw: bytes) -> bool:
    """Whether `raw` holds a run of 19 or more ASCII digits."""
    return _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO)


# dates and dataclasses refused as json refuses them (orjson has no such option for UUIDs
# and enums: those the pure-Python encoder writes as orjson does)
_ORJSON_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                   if orjson is not None else 0)


def dumps(body: Any) -> bytes:
    """`body` as compact JSON (UTF-8), the same bytes with orjson or without it."""
    if orjson is not None:
        try:
            encoded: bytes = orjson.dumps(body, option=_ORJSON_OPTIONS)
            return encoded
        except TypeError:  # a value orjson does not take (non-str keys, …): the encoder's
            pass
    return _json_dumps(body)


def _extra(value: Any) -> Any:
    """What orjson takes beyond json's types, as orjson writes it (json's `default`)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_extra)


def _json_dumps(body: Any) -> bytes:
    """json's C encoder where its text is orjson's (no float with an exponent, none NaN
    or infinite: Python spells those differently), else `_Encoder`."""
    try:
        text = _JSON.encode(body)
    except (TypeError, ValueError):  # the encoder raises the same, in its words
        return _Encoder().encode(body)
    if "e+" in text or "e-" in text or "NaN" in text or "Infinity" in text:
        return _Encoder().encode(body)  # maybe only a string holding these: still right
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return _Encoder().encode(body)


def float_text(value: float) -> str:
    """Purely computational: a float as orjson writes it: Python's shortest round-trip
    digits, plain from 1e-5 up to 1e16 (Python starts at 1e-4), else `<digits>e<exp>` with
    no `+` and no leading zero; not finite: `null`."""
    if not math.isfinite(value):
        return "null"
    text = float.__repr__(value)
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    power = int(exponent)
    if power == -5:  # 1.5e-05 → 0.000015
        sign, digits = ("-", mantissa[1:]) if mantissa[0] == "-" else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e{power}"


class _Encoder:
    """orjson's output for every value json takes (see the module docstring), in Python."""

    def __init__(self) -> None:
        self._string = json.encoder.encode_basestring  # escapes only ", \ and controls
        self._open: set[int] = set()  # containers being written: a cycle is an error

    def encode(self, body: Any) -> bytes:
        parts: list[str] = []
        self._value(body, parts)
        text = "".join(parts)
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate: the whole body as ASCII escapes
            self._string = json.encoder.encode_basestring_ascii
            parts.clear()
            self._value(body, parts)
            return "".join(parts).encode()

    def _value(self, value: Any, out: list[str]) -> None:
        if isinstance(value, str):
            out.append(self._string(value))
        elif value is None or value is True or value is False:
            out.append("null" if value is None else "true" if value else "false")
        elif isinstance(value, int):
            out.append(int.__repr__(value))
        elif isinstance(value, float):
            out.append(float_text(value))
        elif isinstance(value, dict):
            self._container(value, out, self._items)
        elif isinstance(value, list | tuple):
            self._container(value, out, self._elements)
        else:
            self._value(_extra(value), out)

    def _container(self, value: Any, out: list[str],
                   write: Callable[[Any, list[str]], None]) -> None:
        key = id(value)
        if key in self._open:
            raise ValueError("Circular reference detected")
        self._open.add(key)
        write(value, out)
        self._open.discard(key)

    def _items(self, value: dict[Any, Any], out: list[str]) -> None:
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(self._string(self._key(k)))
            out.append(":")
            self._value(v, out)
        out.append("}")

    def _elements(self, value: list[Any] | tuple[Any, ...], out: list[str]) -> None:
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            self._value(v, out)
        out.append("]")

    @staticmethod
    def _key(key: Any) -> str:
        """A dict key as json converts it (orjson takes only str keys)."""
        if isinstance(key, str):
            return key
        if key is None or key is True or key is False:
            return "null" if key is None else "true" if key else "false"
        if isinstance(key, int):
            return int.__repr__(key)
        if isinstance(key, float):
            return float_text(key)
        raise TypeError(f"keys must be str, int, float, bool or None, not "
                        f"{type(key).__name__}")


def loads(raw: bytes) -> Any:
    """JSON text as Python values, exactly as json.loads reads it (and raises)."""
    if orjson is not None and raw.count(b"[") + raw.count(b"{") <= ORJSON_MAX_BRACKETS \
            and not long_digits(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # maybe valid for json (NaN, …): let json decide
            pass
    return json.loads(raw)
