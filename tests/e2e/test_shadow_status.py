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


def _shadow(cp: ControlPlane, phase: str) -> dict[str, Any] | None:
    status = get(cp, "rolloutpolicy", NS, MODEL).get("status") or {}
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
