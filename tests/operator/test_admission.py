"""Admission on every replica: the webhooks outlive a stopping replica (persistent), and the
validating webhook judges against the tenant read live, not a standby's empty indexes."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from controller.operator.handlers import build_registry, validate
from controller.operator.settings import OperatorSettings
from tests.operator.test_handlers import _bodies


def _stable_twin(bodies: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    canary = next(b for b in bodies if b["kind"] == "ModelVersion"
                  and b["metadata"]["name"] == "part-similarity-1-2-0")
    return {**canary, "spec": {**canary["spec"], "stage": "STABLE"}}, canary


def test_every_webhook_is_persistent() -> None:
    """kopf removes non-persistent webhooks when a replica stops, and nothing puts them
    back: a rolling update would switch admission off."""
    registry = build_registry(OperatorSettings(store_url="sqlite://"))
    hooks = registry._webhooks.get_all_handlers()
    assert len(hooks) == 8 and all(h.persistent for h in hooks)


def test_a_standby_with_empty_indexes_refuses_by_the_live_tenant() -> None:
    live = _bodies()
    memo = kopf.Memo(admission_tenant=lambda ns: [b for b in live
                                                  if b["metadata"]["namespace"] == ns])
    promoted, canary = _stable_twin(live)
    with pytest.raises(kopf.AdmissionError, match=r"version\.one-stable"):
        validate(body=kopf.Body(promoted), old=kopf.Body(canary), operation="UPDATE",
                 memo=memo)  # no indexes at all, as on a paused replica


def test_a_tenant_that_cannot_be_read_refuses_the_change() -> None:
    def unreachable(ns: str) -> list[dict[str, Any]]:
        raise OSError("connection refused")

    promoted, canary = _stable_twin(_bodies())
    with pytest.raises(kopf.AdmissionError, match="cannot be read now") as exc:
        validate(body=kopf.Body(promoted), old=kopf.Body(canary), operation="UPDATE",
                 memo=kopf.Memo(admission_tenant=unreachable))
    assert exc.value.code == 503
