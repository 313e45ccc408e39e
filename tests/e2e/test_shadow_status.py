"""The shadow beside canary steps against the real API server (issue 16): the operator
writes `status.shadow` (the CRD declares it, so the API server keeps it): in force while
the steps route, withdrawn with the reason once a user aborts the plan."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import Operator, get, part_similarity_docs, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

NS, MODEL = "shadow-e2e", "part-similarity"


def _shadow(cp: ControlPlane, phase: str, ns: str = NS) -> dict[str, Any] | None:
    """The policy's status once its walk is in `phase` and it shows its shadow."""
    status = get(cp, "rolloutpolicy", ns, MODEL).get("status") or {}
    return status if status.get("stepPhase") == phase and status.get("shadow") else None


def test_status_shows_the_shadow_and_why_it_is_withdrawn(
        control_plane: ControlPlane, operator: Operator) -> None:
    cp = control_plane
    docs = part_similarity_docs(NS)
    for d in docs:
        if d["kind"] == "RolloutPolicy":
            d["spec"].pop("analysis")
            d["spec"]["strategy"] = {"steps": [{"setWeight": 2}, {"pause": {}}]}
            d["spec"]["shadow"] = {"version": "1.2.0", "percent": 20}
    cp.kubectl("create", "namespace", NS, check=False)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    try:
        status = wait_for(lambda: _shadow(cp, "Paused"), timeout=90, what="paused, shadowed")
    except AssertionError:
        print(operator.tail())
        raise
    assert status["shadow"] == {"version": "1.2.0", "percent": 20, "inForce": True}
    assert status["canaryWeight"] == 2

    subprocess.run([sys.executable, "-m", "controller", "rollout", "abort", f"{NS}/{MODEL}",
                    "--cluster"], env=cp.env(), cwd=ROOT, capture_output=True, text=True,
                   check=True)
    aborted = wait_for(lambda: _shadow(cp, "Aborted"), timeout=60, what="aborted")
    shadow = aborted["shadow"]
    assert (shadow["version"], shadow["inForce"]) == ("1.2.0", False)
    assert shadow["reason"].startswith("the policy's weights do not route (analysis-abort")


SHADOW_NS = "shadow-step-e2e"


def test_an_analysis_step_on_recorded_shadow_runs_moves_the_canary(
        control_plane: ControlPlane, operator: Operator) -> None:
    """The operator's periodic analysis measures the step's shadow overlap: it waits with
    no shadow run, and once 20 shadowed queries (recorded through the store API, as a
    worker's mirror writes them; the e2e cluster has no worker) overlap at 0.9, the step
    passes and the canary moves to 2 %, the verdict in status."""
    from controller.records import RunRecord, ShadowRunRecord
    from controller.store.open import open_store

    cp = control_plane
    docs = part_similarity_docs(SHADOW_NS)
    for d in docs:
        if d["kind"] == "RolloutPolicy":
            d["spec"].pop("analysis")
            d["spec"]["strategy"] = {"steps": [
                {"analysis": {"metrics": [{"name": "shadow_overlap_at_10", "min": 0.7}],
                              "minSampleSize": 20, "intervalSeconds": 5}},
                {"setWeight": 2}, {"pause": {}}]}
            d["spec"]["shadow"] = {"version": "1.2.0", "percent": 100}
    cp.kubectl("create", "namespace", SHADOW_NS, check=False)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def waiting() -> dict[str, Any] | None:
        status = get(cp, "rolloutpolicy", SHADOW_NS, MODEL).get("status") or {}
        return status if (status.get("stepPhase"), status.get("canaryWeight")) == (
            "Progressing", 0) and (status.get("shadow") or {}).get("inForce") else None
    try:
        status = wait_for(waiting, timeout=90, what="waiting on the shadow analysis")
    except AssertionError:
        print(operator.tail())
        raise
    assert status["currentStepIndex"] == 0 and status["routingSummary"] == "1.1.0=100"

    store = open_store(operator.store_url, create=False)
    served = [RunRecord(MODEL, "1.1.0", status["policyVersion"], "policy", {}, 5.0, True,
                        True, job_key=f"job-{i}") for i in range(20)]
    with store.transaction(SHADOW_NS, "e2e-shadow") as tx:
        tx.record_runs(served)
    with store.transaction(SHADOW_NS, "e2e-shadow") as tx:
        tx.record_shadow_runs([ShadowRunRecord(r.run_key, MODEL, "1.2.0", 0.9, 0.9, 0.0,
                                               0.8, 0.8, [], 3.0) for r in served])
    done = wait_for(lambda: _shadow(cp, "Paused", SHADOW_NS), timeout=60,
                    what="passed the shadow analysis, paused at 2 %")
    assert (done["currentStepIndex"], done["canaryWeight"]) == (2, 2)
    verdict = done["stepVerdicts"][-1]
    assert verdict["result"] == "Pass" and "shadow_overlap_at_10 0.9" in verdict["summary"]
    assert "n=20" in verdict["summary"]
