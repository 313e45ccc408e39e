"""Argo CD Lua health checks run in a real Lua interpreter; Flux CEL expressions in a real
CEL evaluator; dashboards and alerts name only metrics the code exports."""

from __future__ import annotations

import json
import re
from typing import Any

import celpy
import pytest
import yaml
from lupa import LuaRuntime

from tests.conftest import ROOT

MANIFESTS = ROOT / "manifests"
LUA = (MANIFESTS / "argocd" / "health.lua").read_text()


def _lua_health(obj: dict[str, Any]) -> dict[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    fn = lua.eval("function(obj) " + LUA + " end")
    result = fn(to_lua(obj))
    return {"status": result["status"], "message": result["message"]}


def _obj(conditions: list[dict[str, str]] | None, generation: int = 1, observed: int = 1,
         **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "x", "generation": generation}}
    if conditions is not None:
        obj["status"] = {"observedGeneration": observed, "conditions": conditions, **status}
    return obj


def c(kind: str, status: str, reason: str = "R", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(("obj", "status", "needle"), [
    (_obj([c("Ready", "True")], stepPhase="Progressing", currentStepIndex=1, canaryWeight=10),
     "Progressing", "step 2, canary at 10 %"),
    (_obj([c("Ready", "True")], stepPhase="Paused", currentStepIndex=3, canaryWeight=50),
     "Suspended", "cadml rollout resume"),
    (_obj([c("Ready", "False", "CanaryAborted"),
           c("RolloutHealthy", "False", "CanaryAborted", "canary steps aborted at step 2")],
          stepPhase="Aborted", currentStepIndex=1, canaryWeight=0), "Degraded", "step 2"),
    (_obj([c("Ready", "True")], stepPhase="Aborted", currentStepIndex=1, canaryWeight=0),
     "Degraded", "aborted"),
    (_obj([c("Ready", "True"), c("ReadyToPromote", "True", "StepsDone")],
          stepPhase="ReadyToPromote", currentStepIndex=4, canaryWeight=30,
          routingSummary="1.0.0=70,1.1.0=30"), "Healthy", "1.0.0=70,1.1.0=30"),
    # a stale status never reports a step of the old spec as Suspended
    (_obj([c("Ready", "True")], generation=2, observed=1, stepPhase="Paused",
          currentStepIndex=3, canaryWeight=50), "Progressing", "generation 1"),
])
def test_argocd_lua_health_of_canary_steps(obj: dict[str, Any], status: str,
                                           needle: str) -> None:
    hs = _lua_health(obj)
    assert hs["status"] == status and needle in hs["message"]


@pytest.mark.parametrize(("obj", "status", "needle"), [
    (_obj(None), "Progressing", "Waiting"),
    (_obj([c("Ready", "True")], routingSummary="1.1.0=90,1.2.0=10"), "Healthy",
     "1.1.0=90,1.2.0=10"),
    (_obj([c("Ready", "True")], generation=3, observed=2), "Progressing", "generation 2"),
    (_obj([c("Ready", "False", "InvalidSpec", "spec.weights: … [policy.weights-sum-100]"),
           c("Stalled", "True", "InvalidSpec", "spec.weights: … [policy.weights-sum-100]")]),
     "Degraded", "policy.weights-sum-100"),
    (_obj([c("Ready", "False", "Waiting", "Model acme/x does not exist"),
           c("Reconciling", "True", "Waiting")]), "Progressing", "does not exist"),
    (_obj([c("Ready", "True"), c("RolloutHealthy", "False", "CanaryAborted",
                                 "canary 1.2.0 aborted: success_rate 0.4")]),
     "Degraded", "CanaryAborted"),
    (_obj([c("Ready", "True"), c("RollbackSLOBreached", "True", "SlowRollback",
                                 "new runs needed 1.7 refresh cycles")]), "Degraded", "1.7"),
])
def test_argocd_lua_health(obj: dict[str, Any], status: str, needle: str) -> None:
    hs = _lua_health(obj)
    assert hs["status"] == status and needle in hs["message"]


def test_argocd_cm_patch_carries_the_script_for_every_kind() -> None:
    cm = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm-patch.yaml").read_text())
    for kind in ("Model", "ModelVersion", "RolloutPolicy", "ReleaseRecord"):
        assert cm["data"][f"resource.customizations.health.cadml.io_{kind}"] == LUA


def _flux_exprs() -> list[dict[str, str]]:
    doc = yaml.safe_load((MANIFESTS / "flux" / "kustomization.yaml").read_text())
    return doc["spec"]["healthCheckExprs"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("conditions", "current", "failed"), [
    ([c("Ready", "True")], True, False),
    ([c("Ready", "False"), c("Stalled", "True")], False, True),
    ([c("Ready", "False"), c("Reconciling", "True")], False, False),
])
def test_flux_health_expressions(conditions: list[dict[str, str]], current: bool,
                                 failed: bool) -> None:
    env = celpy.Environment()
    for entry in _flux_exprs():
        activation = {"status": celpy.json_to_cel({"conditions": conditions})}
        for key, expect in (("current", current), ("failed", failed)):
            program = env.program(env.compile(entry[key]))
            assert bool(program.evaluate(activation)) is expect, (entry["kind"], key)


def test_flux_marks_an_aborted_canary_failed() -> None:
    env = celpy.Environment()
    (rp,) = [e for e in _flux_exprs() if e["kind"] == "RolloutPolicy"]
    status = celpy.json_to_cel({"conditions": [c("Ready", "True"),
                                               c("RolloutHealthy", "False", "CanaryAborted")]})
    assert bool(env.program(env.compile(rp["failed"])).evaluate({"status": status}))
    assert not bool(env.program(env.compile(rp["current"])).evaluate({"status": status}))


def _exported() -> set[str]:
    from prometheus_client import REGISTRY

    import controller.metrics  # noqa: F401  - registers every metric

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = _exported()
    texts = [(MANIFESTS / "monitoring" / "alerts.yaml").read_text(),
             (MANIFESTS / "monitoring" / "grafana-dashboard.json").read_text()]
    used = {m for t in texts for m in re.findall(r"\bcadml_[a-z_]+", t)}
    assert len(used) >= 10
    assert used - exported == set()


def test_dashboard_is_valid_json_with_panels() -> None:
    dash = json.loads((MANIFESTS / "monitoring" / "grafana-dashboard.json").read_text())
    assert dash["uid"] == "cadml-overview" and len(dash["panels"]) >= 8


@pytest.mark.parametrize(("phase", "current", "failed"), [
    ("Progressing", True, False), ("Paused", True, False), ("ReadyToPromote", True, False),
    ("Aborted", False, True)])
def test_flux_health_of_canary_steps(phase: str, current: bool, failed: bool) -> None:
    """A walking or paused plan is current once Ready (a plan outlasts any timeout); an
    aborted one is failed even before its conditions say so."""
    env = celpy.Environment()
    (rp,) = [e for e in _flux_exprs() if e["kind"] == "RolloutPolicy"]
    status = celpy.json_to_cel({"conditions": [c("Ready", "True")], "stepPhase": phase})
    assert bool(env.program(env.compile(rp["failed"])).evaluate({"status": status})) is failed
    assert bool(env.program(env.compile(rp["current"])).evaluate({"status": status})) is current
