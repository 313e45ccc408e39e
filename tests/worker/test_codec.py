"""The worker's JSON codec reads and writes what json does, with orjson or without it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.worker import codec

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


@pytest.fixture(params=["orjson", "json"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json":  # orjson not installed: the same answers from json alone
        monkeypatch.setattr(codec, "orjson", None)
    elif codec.orjson is None:
        pytest.skip("orjson is not installed (pip install 'cadml[fast]')")
    return str(request.param)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN


@pytest.mark.parametrize("raw", BODIES)
def test_loads_reads_what_json_reads(backend: str, raw: bytes) -> None:
    assert _same(codec.loads(raw), json.loads(raw))


@pytest.mark.parametrize("raw", BROKEN)
def test_loads_refuses_what_json_refuses(backend: str, raw: bytes) -> None:
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
def test_dumps_writes_compact_json_that_reads_back(backend: str, body: Any) -> None:
    encoded = codec.dumps(body)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == json.loads(json.dumps(body))
    assert b", " not in encoded and b": " not in encoded
