"""The worker's JSON codec reads and writes what json does, with orjson or without it."""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.worker import codec
from tests.worker.jsonchecks import strict_json


@dataclass
class Point:
    x: int
    y: int


BODIES = [
    b'{"vector": [0.1, 2.5e-3, -1], "topK": 10, "jobId": "c1-1"}',
    b'{"vector": [NaN, Infinity]}',  # json reads these; orjson does not
    b'{"jobId": "\\ud800"}',  # a lone surrogate: json reads it
    b'{"topK": 123456789012345678901234567890}',  # beyond 64 bits
    b'{"a": 1, "a": 2}',
    "{\"jobId\": \"zeichnung-\u00fc\"}".encode(),
    b"[1, 2]",
    b'{"jobId": 1234567890123456789}',
    b'{"vector": [1e400]}',
    b"[" * 60 + b"]" * 60,
    b'{"v": ' + b"[" * 500 + b"]" * 500 + b"}",
]
BROKEN = [b"", b"{", b'{"a": }', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN


@pytest.mark.parametrize("raw", BODIES)
def test_loads_reads_what_json_reads(codec_backend: str, raw: bytes) -> None:
    assert _same(codec.loads(raw), json.loads(raw))


@pytest.mark.parametrize("raw", BROKEN)
def test_loads_refuses_what_json_refuses(codec_backend: str, raw: bytes) -> None:
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError, RecursionError)):
        json.loads(raw)
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError, RecursionError)):
        codec.loads(raw)


@pytest.mark.parametrize("body", [
    {"runKey": "ab", "results": [{"id": "d1", "distance": 0.25, "score": 0.8}],
     "parseMs": None, "metThreshold": True, "thresholds": {"similarity": {"value": 0.82}}},
    {"jobId": "zeichnung-\u00fc", "n": 2**40},
    {1: "non-str key"},  # orjson refuses: encoded by json
])
def test_dumps_writes_compact_json_that_reads_back(codec_backend: str, body: Any) -> None:
    encoded = codec.dumps(body)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == json.loads(json.dumps(body))
    assert b", " not in encoded and b": " not in encoded


# --- dumps: one behaviour, whichever backend is installed ------------------------------

class Colour(enum.Enum):
    RED = "red"
    ONE = 1.5e-7


_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
            | st.uuids() | st.sampled_from(Colour))
_KEYS = _TEXT | st.integers() | st.floats() | st.booleans() | st.none()
JSON_LIKE = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.tuples(inner, inner)
                         | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=24)


@settings(max_examples=400, deadline=None)
@given(JSON_LIKE)
def test_both_backends_write_the_same_strict_json(value: Any) -> None:
    """Before: NaN and Infinity were `null` with orjson and `NaN` (not JSON) without it,
    `1e-07` vs `1e-7`, `\\u00fc` vs UTF-8, and UUIDs encoded by one and refused by the
    other: the answer depended on what was installed."""
    if codec.orjson is None:
        pytest.skip("orjson is not installed (pip install 'cadml[fast]')")
    with_orjson = codec.dumps(value)
    saved, codec.orjson = codec.orjson, None
    try:
        without = codec.dumps(value)
    finally:
        codec.orjson = saved
    assert with_orjson == without
    strict_json(with_orjson)


@settings(max_examples=400, deadline=None)
@given(JSON_LIKE)
def test_json_fast_path_writes_what_the_encoder_writes(value: Any) -> None:
    """Without orjson: json's C encoder is used only where its text is the rules' text."""
    assert codec._json_dumps(value) == codec._Encoder().encode(value)


@pytest.mark.parametrize("value, expected", [
    ({"score": float("nan"), "d": float("inf"), "e": -float("inf")},
     b'{"score":null,"d":null,"e":null}'),
    ([1e-7, 1e16, 1.5e-5, -2.5e-5, 1e-4, 5e-324, -0.0, 0.1, 1e300],
     b"[1e-7,1e16,0.000015,-0.000025,0.0001,5e-324,-0.0,0.1,1e300]"),
    ({"jobId": "zeichnung-\u00fc", "n": 2**70},
     '{"jobId":"zeichnung-\u00fc","n":1180591620717411303424}'.encode()),
    ({"bad": "\ud800"}, b'{"bad":"\\ud800"}'),
    ({1: "a", None: "b", 2.5e-8: "c"}, b'{"1":"a","null":"b","2.5e-8":"c"}'),
    ({"id": uuid.UUID(int=1), "c": Colour.RED, "o": Colour.ONE},
     b'{"id":"00000000-0000-0000-0000-000000000001","c":"red","o":1.5e-7}'),
])
def test_dumps_writes_one_strict_json(codec_backend: str, value: Any, expected: bytes) -> None:
    assert codec.dumps(value) == expected
    strict_json(codec.dumps(value))


@pytest.mark.parametrize("value, error", [
    ({"at": datetime.now(UTC)}, TypeError),  # orjson would write it, json would not
    ({"at": date(2026, 12, 1)}, TypeError),
    ({"d": Point(1, 2)}, TypeError),
    ({"a": object()}, TypeError),
    ({(1, 2): "tuple key"}, TypeError),
])
def test_dumps_refuses_what_json_refuses(codec_backend: str, value: Any,
                                         error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.dumps(value)


def test_dumps_refuses_a_circular_body(codec_backend: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        codec.dumps({"a": loop})


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(st.sampled_from([b"0", b"7", b"9", b".", b"-", b"e", b" ", b"[", b"a",
                                     b"\xff", b"12345678901234567", b"1234567890123456789"]),
                    max_size=60).map(b"".join))
def test_the_long_digit_check_is_the_regular_expression_it_replaced(raw: bytes) -> None:
    """A body with a run of 19 digits goes to json (orjson reads such integers as floats);
    the check is a translate and a substring search, the same answer as the regex."""
    import re

    assert codec.long_digits(raw) == (re.search(rb"[0-9]{19}", raw) is not None)
