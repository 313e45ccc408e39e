"""Canary steps against the real API server (issue 16): `cadml run` walks a policy's
steps in its status, `kubectl get rolloutpolicy` shows the step and the canary weight,
and `cadml rollout resume|abort|retry --cluster` are annotations the mutating webhook
stamps with the authenticated user and the operator applies once, auditing that user.
The spec never changes (its generation stays 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import Operator, get, part_similarity_docs, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

NS, MODEL = "steps-e2e", "part-similarity"


@pytest.fixture(scope="module")
def stepped(control_plane: ControlPlane, operator: Operator) -> ControlPlane:
    docs = part_similarity_docs(NS)
    for d in docs:
        if d["kind"] == "RolloutPolicy":
            d["spec"].pop("analysis")  # judged by runs; here a user decides at the pause
            d["spec"]["strategy"] = {"steps": [{"setWeight": 2}, {"pause": {}},
                                               {"setWeight": 5}, {"pause": {}}]}
    control_plane.kubectl("create", "namespace", NS, check=False)
    control_plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return control_plane


def _status(cp: ControlPlane) -> dict[str, Any]:
    return get(cp, "rolloutpolicy", NS, MODEL).get("status") or {}


def _at(cp: ControlPlane, index: int, phase: str) -> dict[str, Any] | None:
    status = _status(cp)
    ok = (status.get("currentStepIndex"), status.get("stepPhase")) == (index, phase)
    return status if ok else None


def _rollout(cp: ControlPlane, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "rollout", action, f"{NS}/{MODEL}", "--cluster",
         "--actor", "mallory"], env=cp.env(), cwd=ROOT, capture_output=True, text=True,
        check=True)


def test_steps_walk_in_status_and_commands_are_stamped_and_applied_once(
        stepped: ControlPlane, operator: Operator) -> None:
    cp = stepped
    try:
        status = wait_for(lambda: _at(cp, 1, "Paused"), timeout=90, what="paused at step 2")
    except AssertionError:
        print(operator.tail())
        raise
    assert status["canaryWeight"] == 2 and status["routingSummary"] == "1.1.0=98,1.2.0=2"
    header, row = cp.kubectl("get", "rolloutpolicy", "-n", NS, MODEL).stdout.splitlines()[:2]

    def column(name: str) -> str:  # kubectl aligns each column at its header's offset
        start = header.index(f" {name} ") + 1
        return row[start:].split()[0]
    assert (column("STEP"), column("CANARY%")) == ("1", "2"), (header, row)

    _rollout(cp, "resume")
    annotated = get(cp, "rolloutpolicy", NS, MODEL)
    command = json.loads(annotated["metadata"]["annotations"]["cadml.io/rollout-command"])
    assert command["user"] != "mallory"  # the webhook wrote the authenticated user
    wait_for(lambda: _at(cp, 3, "Paused"), timeout=60, what="paused at step 4")
    assert _status(cp)["canaryWeight"] == 5

    _rollout(cp, "resume")
    done = wait_for(lambda: _at(cp, 4, "ReadyToPromote"), timeout=60, what="ReadyToPromote")
    assert done["routingSummary"] == "1.1.0=90,1.2.0=10"  # the spec's own weights
    ready = next(c for c in done["conditions"] if c["type"] == "ReadyToPromote")
    assert ready["status"] == "True"
    rows = operator.rows("SELECT actor, details FROM audit_event WHERE action = 'step' "
                         f"AND tenant_id = '{NS}' ORDER BY seq")
    resumed = [actor for actor, details in rows
               if (json.loads(details) if isinstance(details, str) else details)
               .get("command") == "resume"]
    assert resumed == [f"k8s:{command['user']}"] * 2

    # a command the live status says cannot apply is refused, and nothing is annotated
    def annotation() -> str:
        meta = get(cp, "rolloutpolicy", NS, MODEL)["metadata"]
        return str(meta["annotations"]["cadml.io/rollout-command"])
    before = annotation()
    refused = subprocess.run(
        [sys.executable, "-m", "controller", "rollout", "retry", f"{NS}/{MODEL}",
         "--cluster"], env=cp.env(), cwd=ROOT, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "not aborted" in refused.stderr
    assert annotation() == before
    _rollout(cp, "abort")
    aborted = wait_for(lambda: _at(cp, 4, "Aborted"), timeout=60, what="aborted")
    assert aborted["routingSummary"] == "1.1.0=100"
    healthy = next(c for c in aborted["conditions"] if c["type"] == "RolloutHealthy")
    assert healthy["reason"] == "CanaryAborted"
    _rollout(cp, "retry")
    wait_for(lambda: _at(cp, 1, "Paused"), timeout=60, what="restarted at step 2")
    assert get(cp, "rolloutpolicy", NS, MODEL)["metadata"]["generation"] == 1
