"""Shared by the codec tests: both JSON backends as a fixture, and strict JSON parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.worker import codec


def strict_json(raw: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are refused."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")
    return json.loads(raw, parse_constant=refuse)


@pytest.fixture(params=["orjson", "json"])
def codec_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case with orjson and with json alone (orjson not installed)."""
    if request.param == "json":
        monkeypatch.setattr(codec, "orjson", None)
    elif codec.orjson is None:
        pytest.skip("orjson is not installed (pip install 'cadml[fast]')")
    return str(request.param)
