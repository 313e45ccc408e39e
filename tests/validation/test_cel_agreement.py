"""The CRDs' CEL rules and their Python mirrors give the same verdict on the same objects.

The CEL expressions are taken from the generated CRDs (what the API server runs)
and evaluated with cel-python. One stand-in: Kubernetes adds a `sum()` member
function on lists (k8s.io/apiserver/pkg/cel/library, lists); cel-python has
none, so `_k8s_sum` below supplies it. Strings with `format: date-time` become
CEL timestamps, as the API server types them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes

from controller.api.v1alpha1 import KINDS, Resource
from controller.schemagen import openapi_schema
from controller.sources import collect_paths
from controller.validation.parse import parse_document
from controller.validation.single import check_object, check_transition
from controller.yamlio import load_documents
from tests.conftest import EXAMPLES, INVALID

_ENV = celpy.Environment()
_ID = re.compile(r"^\[([a-z0-9.-]+)\]")


def _k8s_sum(items: celtypes.ListType) -> Any:
    total: Any = celtypes.IntType(0)
    for item in items:
        total = total + item
    return total


def _to_cel(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return celtypes.MapType({
            celtypes.StringType(k): _to_cel(v, props.get(k, extra if isinstance(extra, dict)
                                                         else {}))
            for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(v, schema.get("items", {})) for v in value])
    if isinstance(value, str) and schema.get("format") == "date-time":
        return celtypes.TimestampType(value)
    return celpy.json_to_cel(value)


def _cel_failures(schema: dict[str, Any], new: Any, old: Any | None) -> set[str]:
    """Rule ids whose CEL evaluates false, walking the schema like the API server."""
    failed: set[str] = set()
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        program = _ENV.program(_ENV.compile(rule["rule"]), functions={"sum": _k8s_sum})
        activation = {"self": _to_cel(new, schema)}
        if transition:
            activation["oldSelf"] = _to_cel(old, schema)
        if not bool(program.evaluate(activation)):
            failed.add(_ID.match(rule["message"]).group(1))  # type: ignore[union-attr]
    for name, sub in schema.get("properties", {}).items():
        if isinstance(new, dict) and name in new:
            old_sub = old.get(name) if isinstance(old, dict) else None
            failed |= _cel_failures(sub, new[name], old_sub)
    if "items" in schema and isinstance(new, list):
        for item in new:  # list items without listType=map are not correlated with oldSelf
            failed |= _cel_failures(schema["items"], item, None)
    return failed


def _as_api_server_sees_it(resource: Resource) -> dict[str, Any]:
    # Defaults applied, nulls dropped: what the API server stores after defaulting.
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def _parsed_examples() -> list[Resource]:
    out = []
    files, _ = collect_paths([str(EXAMPLES), *map(str, sorted(INVALID.glob("*.yaml")))], 10**7)
    for f in files:
        try:
            text = f.data.decode()
        except UnicodeDecodeError:
            continue
        docs, _ = load_documents(text, f.name)
        for d in docs:
            r = parse_document(d)
            if r.loaded:
                out.append(r.loaded.resource)
    return out


def _python_failures(resource: Resource, old: Resource | None = None) -> set[str]:
    errors = check_object(resource) + (check_transition(old, resource) if old else [])
    return {e.rule for e in errors}


def _cel_verdict(resource: Resource, old: Resource | None = None) -> set[str]:
    schema = openapi_schema(resource.kind)
    new_doc = _as_api_server_sees_it(resource)
    old_doc = _as_api_server_sees_it(old) if old else None
    return _cel_failures(schema, new_doc, old_doc)


@pytest.mark.parametrize("resource", _parsed_examples(),
                         ids=lambda r: f"{r.kind}-{r.metadata.namespace}-{r.metadata.name}")
def test_examples_agree(resource: Resource) -> None:
    assert _cel_verdict(resource) == _python_failures(resource)


def _policy(weights: list[tuple[str, int]], window: tuple[str, str] | None) -> Resource:
    spec: dict[str, Any] = {"modelRef": "m", "weights": [{"version": v, "weight": w}
                                                         for v, w in weights]}
    if window:
        spec["validFrom"], spec["validUntil"] = window
    return KINDS["RolloutPolicy"].model_validate(
        {"apiVersion": "cadml.io/v1alpha1", "kind": "RolloutPolicy",
         "metadata": {"name": "p", "namespace": "t"}, "spec": spec})


def _random_policies(n: int) -> list[Resource]:
    rng = random.Random(20261122)
    out = []
    for _ in range(n):
        k = rng.randint(1, 4)
        versions = [rng.choice(["1.0.0", "1.1.0", "1.2.0", "2.0.0"]) for _ in range(k)]
        weights = [rng.choice([0, 1, 5, 50, 99, 100, rng.randint(0, 100)]) for _ in range(k)]
        window = None
        if rng.random() < 0.3:
            a, b = rng.sample(["2026-01-01T00:00:00Z", "2026-06-01T00:00:00+02:00",
                               "2026-06-01T00:00:00Z"], 2)
            window = (a, b)
        out.append(_policy(list(zip(versions, weights, strict=True)), window))
    return out


@pytest.mark.parametrize("policy", _random_policies(300))
def test_generated_policies_agree(policy: Resource) -> None:
    assert _cel_verdict(policy) == _python_failures(policy)


def _version(stage: str, sha: bool, model: str = "m", semver: str = "1.0.0",
             uri: str = "s3://b/x") -> Resource:
    artifact: dict[str, Any] = {"uri": uri, "format": "npz"}
    if sha:
        artifact["sha256"] = "a" * 64
    return KINDS["ModelVersion"].model_validate(
        {"apiVersion": "cadml.io/v1alpha1", "kind": "ModelVersion",
         "metadata": {"name": "v", "namespace": "t"},
         "spec": {"modelRef": model, "version": semver, "stage": stage, "artifact": artifact}})


STAGES = ["DRAFT", "CANARY", "STABLE", "DEPRECATED"]


@pytest.mark.parametrize("old_stage", STAGES)
@pytest.mark.parametrize("new_stage", STAGES)
@pytest.mark.parametrize("sha", [True, False])
def test_stage_transitions_agree(old_stage: str, new_stage: str, sha: bool) -> None:
    old, new = _version(old_stage, sha), _version(new_stage, sha)
    assert _cel_verdict(new, old) == _python_failures(new, old)


@pytest.mark.parametrize("change", [
    {"model": "other"}, {"semver": "1.0.1"}, {"uri": "s3://b/y"}, {},
])
@pytest.mark.parametrize("stage", ["DRAFT", "CANARY", "STABLE"])
def test_version_immutability_agrees(change: dict[str, str], stage: str) -> None:
    old, new = _version(stage, True), _version(stage, True, **change)
    assert _cel_verdict(new, old) == _python_failures(new, old)


def _release(**spec_changes: Any) -> Resource:
    spec: dict[str, Any] = {
        "releaseId": "r1", "gitSha": "abcdef1", "artifacts": {"modelRef": "v"},
        "evalSetRef": "e", "evalReportUri": "s3://r", "approvers": ["a"],
        "canaryPercent": 5, "changeSummary": "x", "riskLevel": "low"}
    spec.update(spec_changes)
    return KINDS["ReleaseRecord"].model_validate(
        {"apiVersion": "cadml.io/v1alpha1", "kind": "ReleaseRecord",
         "metadata": {"name": "r", "namespace": "t"}, "spec": spec})


@pytest.mark.parametrize("risk", ["low", "medium", "high", "write"])
@pytest.mark.parametrize("approvers", [["a"], ["a", "b"], ["a", "a"], ["a", "b", "a"]])
def test_release_rules_agree(risk: str, approvers: list[str]) -> None:
    rr = _release(riskLevel=risk, approvers=approvers)
    assert _cel_verdict(rr) == _python_failures(rr)


@pytest.mark.parametrize("edit", [{}, {"changeSummary": "rewritten"}, {"canaryPercent": 50},
                                  {"evidence": {"evalScore": 0.5}}])
def test_release_immutability_agrees(edit: dict[str, Any]) -> None:
    old, new = _release(), _release(**edit)
    verdict = _cel_verdict(new, old)
    assert verdict == _python_failures(new, old)
    assert ("release.immutable" in verdict) == bool(edit)


def test_crd_files_carry_the_rules_the_mirrors_know() -> None:
    from controller.validation.single import OBJECT_RULES, TRANSITION_RULES

    ids = set()
    for path in sorted(Path(__file__).resolve().parents[2].joinpath("crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        text = yaml.safe_dump(crd)
        ids |= set(re.findall(r"\[([a-z0-9-]+\.[a-z0-9.-]+)\] ", text))
    assert ids == set(OBJECT_RULES) | set(TRANSITION_RULES)


def _stepped_policy(rng: random.Random) -> Resource:
    """A policy with canary steps: sometimes a step with two actions or none, sometimes
    weights naming more than one canary."""
    k = rng.choice([1, 2, 2, 3])
    weights = [(v, w) for v, w in zip(["1.0.0", "1.1.0", "1.2.0"], [100 - 10 * (k - 1), 10, 0],
                                      strict=False)][:k]
    actions: list[dict[str, Any]] = [
        {"setWeight": rng.randint(0, 99)}, {"pause": {"duration": "10m"}}, {"pause": {}},
        {"analysis": {"metrics": [{"name": "success_rate", "min": 0.9}]}}]
    steps = []
    for _ in range(rng.randint(1, 5)):
        n = rng.choice([1, 1, 1, 0, 2])
        step: dict[str, Any] = {}
        for action in rng.sample(actions, n):
            step.update(action)
        steps.append(step)
    return KINDS["RolloutPolicy"].model_validate(
        {"apiVersion": "cadml.io/v1alpha1", "kind": "RolloutPolicy",
         "metadata": {"name": "p", "namespace": "t"},
         "spec": {"modelRef": "m", "weights": [{"version": v, "weight": w} for v, w in weights],
                  "strategy": {"steps": steps}}})


@pytest.mark.parametrize("policy", [_stepped_policy(random.Random(i)) for i in range(120)])
def test_stepped_policies_agree(policy: Resource) -> None:
    verdict = _cel_verdict(policy)
    assert verdict == _python_failures(policy)


def test_step_rules_refuse_what_they_say() -> None:
    """Both rules fire (in CEL and in Python) on the objects they are about."""
    bad = _stepped_policy(random.Random(0)).model_dump(mode="json", by_alias=True,
                                                        exclude_none=True)
    bad["spec"]["weights"] = [{"version": "1.0.0", "weight": 80},
                              {"version": "1.1.0", "weight": 10},
                              {"version": "1.2.0", "weight": 10}]
    bad["spec"]["strategy"] = {"steps": [{"setWeight": 10, "pause": {}}]}
    policy = KINDS["RolloutPolicy"].model_validate(bad)
    assert _cel_verdict(policy) == _python_failures(policy) == {
        "policy.steps-one-canary", "policy.step-one-action"}
