"""The request checks' fast paths decide exactly as their plain definitions."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from controller.worker.app import _controls, _vector
from controller.worker.runtime import WorkerError

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # the definition: C0, DEL and C1
TEXTS = [chr(c) for c in range(0x100)] + [
    "", "job-1", "job 1", "a\nb", "\x1b[2J", "é", "é\x85", "ok\x9f", "日本\x00", "x" * 300,
    "\u2028", "\u0100"]


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: ascii(t)[:20])
def test_controls_is_the_regex(text: str) -> None:
    assert _controls(text) == (CONTROL.search(text) is not None)


@pytest.mark.parametrize("value", [[0.0], [1.5, -2.0], [3.0e38] * 24, [-3.0e38, 3.0e38],
                                   [1e-45] * 3])
def test_finite_vectors_are_taken(value: list[float]) -> None:
    got = _vector(value)
    assert got.dtype == np.float32 and got.tolist() == np.asarray(value, np.float32).tolist()


@pytest.mark.parametrize("value", [[], None, "abc", [[1.0, 2.0]], [float("nan")],
                                   [1.0, float("inf")], [float("-inf"), float("inf")],
                                   [1e39], [1.0, "x"], {"a": 1}])
def test_anything_else_is_bad_vector(value: Any) -> None:
    with pytest.raises(WorkerError) as exc:
        _vector(value)
    assert exc.value.code == "bad_vector"
