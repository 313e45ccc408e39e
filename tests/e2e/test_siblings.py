"""End to end: objects that arrived before their Model are Ready within seconds of the
Model's arrival, written by the Model's pass, with the repair timer out of the way
(its interval here is 10 minutes)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

TIMER_INTERVAL = 600  # read by the operator fixture
NS = "early-birds"
ART = {"uri": "s3://m/x/index.faiss", "format": "faiss-index",
       "sha256": "2a0266f1c7b70b43021df6f5aa8d7c4e55d10dd775f19531af874a703aed248e"}


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", [])
                 if c["type"] == "Ready"), None)


def test_a_version_applied_before_its_model_is_ready_when_the_model_arrives(
        control_plane: ControlPlane, operator: Operator) -> None:
    cp = control_plane
    cp.kubectl("create", "namespace", NS, check=False)
    version = {"apiVersion": "cadml.io/v1alpha1", "kind": "ModelVersion",
               "metadata": {"namespace": NS, "name": "sim-1-0-0"},
               "spec": {"modelRef": "sim", "version": "1.0.0", "stage": "STABLE",
                        "artifact": ART, "featureVersion": "v4"}}
    model = {"apiVersion": "cadml.io/v1alpha1", "kind": "Model",
             "metadata": {"namespace": NS, "name": "sim"},
             "spec": {"modelKey": "sim", "provider": "cadml", "displayName": "Sim",
                      "review": {"controlAllowed": False,
                                 "defaultDecision": "PENDING_REVIEW"},
                      "workers": {"replicas": 1}}}
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(version))
    waiting = wait_for(lambda: _ready(get(cp, "mv", NS, "sim-1-0-0")), timeout=30,
                       what="the version's first status")
    assert waiting["status"] == "False" and "does not exist" in waiting["message"], waiting
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(model))
    started = time.monotonic()
    try:
        wait_for(lambda: (_ready(get(cp, "mv", NS, "sim-1-0-0")) or {}).get("status")
                 == "True", timeout=15, every=0.2, what="the version Ready")
    except AssertionError:
        print(json.dumps(get(cp, "mv", NS, "sim-1-0-0").get("status"), indent=1))
        print(operator.tail())
        raise
    print(f"\nversion Ready {time.monotonic() - started:.1f} s after its Model was applied "
          f"(repair timer: {TIMER_INTERVAL} s)")
