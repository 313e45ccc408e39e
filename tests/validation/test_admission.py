"""The admission verdict: refuse what no later object can fix, accept what is only early."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.v1alpha1 import KINDS, Resource
from controller.validation import admission_errors
from tests.conftest import NOW


def _obj(kind: str, name: str, spec: dict[str, Any], ns: str = "t") -> Resource:
    return KINDS[kind].model_validate({"apiVersion": "cadml.io/v1alpha1", "kind": kind,
                                       "metadata": {"name": name, "namespace": ns},
                                       "spec": spec})


def _model(name: str = "m", key: str = "m") -> Resource:
    return _obj("Model", name, {"modelKey": key, "provider": "p", "displayName": "M"})


def _version(name: str, semver: str, stage: str, model: str = "m") -> Resource:
    return _obj("ModelVersion", name, {"modelRef": model, "version": semver, "stage": stage,
                                       "artifact": {"uri": "s3://b/k", "sha256": "a" * 64,
                                                    "format": "npz"}})


def _policy(weights: list[tuple[str, int]], model: str = "m", name: str = "p") -> Resource:
    return _obj("RolloutPolicy", name, {"modelRef": model, "weights": [
        {"version": v, "weight": w} for v, w in weights]})


def _rules(new: Resource, old: Resource | None, existing: list[Resource]) -> list[str]:
    return [e.rule for e in admission_errors(new, old, existing, NOW)]


def test_second_stable_is_refused_with_a_retry_hint() -> None:
    existing = [_model(), _version("v1", "1.0.0", "STABLE")]
    new = _version("v2", "2.0.0", "STABLE")
    errors = admission_errors(new, None, existing, NOW)
    assert [e.rule for e in errors] == ["version.one-stable"]
    assert "DEPRECATED" in errors[0].message and "retry" in errors[0].message


def test_promotion_applied_old_first_is_accepted() -> None:
    existing = [_model(), _version("v1", "1.0.0", "STABLE"), _version("v2", "2.0.0", "CANARY")]
    deprecated = _version("v1", "1.0.0", "DEPRECATED")
    assert _rules(deprecated, existing[1], existing) == []
    existing[1] = deprecated
    assert _rules(_version("v2", "2.0.0", "STABLE"), existing[2], existing) == []


@pytest.mark.parametrize("new", [
    _version("v1", "1.0.0", "STABLE"),  # its Model is not there yet
    _policy([("1.0.0", 100)]),  # neither model nor version yet
    _policy([("1.0.0", 90), ("2.0.0", 10)]),
])
def test_references_to_objects_not_yet_created_are_accepted(new: Resource) -> None:
    assert _rules(new, None, []) == []


def test_own_rules_and_transitions_are_refused() -> None:
    assert _rules(_policy([("1.0.0", 90), ("2.0.0", 20)]), None, []) == ["policy.weights-sum-100"]
    old = _version("v1", "1.0.0", "STABLE")
    assert _rules(_version("v1", "1.0.0", "DRAFT"), old, [old]) == ["version.stage-transition"]


def test_review_cannot_be_weakened() -> None:
    weak = _obj("Model", "m", {"modelKey": "m", "provider": "p", "displayName": "M",
                               "review": {"controlAllowed": True}})
    assert _rules(weak, _model(), [_model()]) == ["model.review-control-allowed"]


def test_errors_about_other_objects_do_not_block_this_one() -> None:
    existing = [_model(), _version("a", "1.0.0", "STABLE"), _version("b", "2.0.0", "STABLE")]
    assert _rules(_policy([("1.0.0", 100)]), None, existing) == []


def test_tenants_are_separate() -> None:
    existing = [_model(), _version("v1", "1.0.0", "STABLE")]
    other_tenant = _obj("ModelVersion", "v2", {"modelRef": "m", "version": "2.0.0",
                                               "stage": "STABLE", "artifact": {
                                                   "uri": "s3://b/k", "sha256": "a" * 64,
                                                   "format": "npz"}}, ns="other")
    assert _rules(other_tenant, None, existing) == []
