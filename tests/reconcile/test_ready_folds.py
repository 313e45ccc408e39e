"""Ready folds the domain conditions (Flux's summarize step): a negative-polarity condition
in its bad state makes Ready False with its reason, so `kubectl wait --for=condition=Ready`
and kstatus are not fooled by an aborted canary, a slow rollback, a second STABLE or a
model still served by a DEPRECATED version."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from controller.reconcile.conditions import Cond, summary
from controller.records import RollbackFacts
from tests.conftest import NOW
from tests.reconcile.test_planner import BASE, _observed_after, _plan, model, policy, version

HEALTHY = Cond("RolloutHealthy", "True", "AnalysisPassing")
ABORTED = Cond("RolloutHealthy", "False", "CanaryAborted", "canary 1.1.0 aborted")
FAILING = Cond("RolloutHealthy", "False", "AnalysisFailing", "success_rate 0.4")
UNKNOWN = Cond("RolloutHealthy", "Unknown", "InsufficientData", "no analysis yet")
SLOW = Cond("RollbackSLOBreached", "True", "SlowRollback", "1.7 refresh cycles")
FAST = Cond("RollbackSLOBreached", "False", "WithinOneCycle")
CONFLICT = Cond("Conflict", "True", "SecondStable", "two STABLE versions")
NO_CONFLICT = Cond("Conflict", "False", "NoConflict")
DEPRECATED = Cond("Degraded", "True", "ServesDeprecated", "1.1.0 is DEPRECATED")
SERVING = Cond("Degraded", "False", "ServesRoutable")


def _by_type(conds: list[Cond]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conds}


@pytest.mark.parametrize(("domain", "ready", "stalled", "reconciling"), [
    ([], ("True", "Reconciled"), "False", "False"),
    ([HEALTHY, FAST, NO_CONFLICT, SERVING], ("True", "Reconciled"), "False", "False"),
    ([UNKNOWN], ("True", "Reconciled"), "False", "False"),  # no verdict yet: not a failure
    ([ABORTED], ("False", "CanaryAborted"), "True", "False"),  # only a Git change clears it
    ([FAILING], ("False", "AnalysisFailing"), "False", "True"),  # analysis goes on
    ([SLOW], ("False", "SlowRollback"), "False", "False"),
    ([HEALTHY, SLOW], ("False", "SlowRollback"), "False", "False"),
    ([DEPRECATED], ("False", "ServesDeprecated"), "True", "False"),
    ([SLOW, ABORTED], ("False", "CanaryAborted"), "True", "False"),  # the most severe first
])
def test_negative_conditions_fold_into_ready(domain: list[Cond], ready: tuple[str, str],
                                             stalled: str, reconciling: str) -> None:
    conds = summary(invalid=None, waiting=None, domain=domain)
    got = _by_type(conds)
    assert got["Ready"] == ready
    assert got["Stalled"][0] == stalled and got["Reconciling"][0] == reconciling
    bad = next((c for c in domain if c.reason == ready[1]), None)
    if bad is not None:  # Ready carries the folded condition's message
        assert next(c for c in conds if c.type == "Ready").message == bad.message


@pytest.mark.parametrize(("invalid", "waiting", "domain", "ready", "stalled"), [
    ("spec.x: bad", None, [CONFLICT], ("False", "SecondStable"), ("True", "InvalidSpec")),
    ("spec.x: bad", None, [NO_CONFLICT], ("False", "InvalidSpec"), ("True", "InvalidSpec")),
    ("spec.x: bad", None, [SLOW], ("False", "InvalidSpec"), ("True", "InvalidSpec")),
    (None, "Model m does not exist", [], ("False", "Waiting"), ("False", "Waiting")),
])
def test_an_invalid_spec_still_stalls(invalid: str | None, waiting: str | None,
                                      domain: list[Cond], ready: tuple[str, str],
                                      stalled: tuple[str, str]) -> None:
    got = _by_type(summary(invalid=invalid, waiting=waiting, domain=domain))
    assert got["Ready"] == ready and got["Stalled"] == stalled


def _conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_slow_rollback_makes_the_policy_not_ready() -> None:
    observed = _observed_after(BASE)
    observed = replace(observed, rollbacks={"m": RollbackFacts(
        1, "rollback", "r", NOW - timedelta(seconds=20), NOW - timedelta(seconds=10), 5)})
    conds = _conds(_plan(BASE, observed).computed[("RolloutPolicy", "m")])
    assert conds["RollbackSLOBreached"]["status"] == "True"
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "SlowRollback")


def test_a_model_served_by_a_deprecated_version_is_not_ready() -> None:
    observed = _observed_after(BASE)
    # the canary is deprecated while the policy still routes 10 % to it: the policy is
    # invalid and not applied, so the workers keep serving the last snapshot
    desired = [model(), version("1.0.0", "STABLE"), version("1.1.0", "DEPRECATED"),
               policy([("1.0.0", 90), ("1.1.0", 10)])]
    plan = _plan(desired, observed)
    model_conds = _conds(plan.computed[("Model", "m")])
    assert model_conds["Degraded"]["status"] == "True"
    assert (model_conds["Ready"]["status"], model_conds["Ready"]["reason"]) == \
        ("False", "ServesDeprecated")
    assert "1.1.0" in model_conds["Ready"]["message"]
    assert _conds(plan.computed[("RolloutPolicy", "m")])["Ready"]["status"] == "False"
    healthy = _conds(_plan(BASE, observed).computed[("Model", "m")])
    assert healthy["Ready"]["status"] == "True" and healthy["Degraded"]["status"] == "False"
