"""spec.shadow in the real kube-apiserver: the generated CRD's schema and CEL rule.

Only the CRDs (no operator, no webhook): what the API server itself refuses."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

POLICY = """apiVersion: cadml.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: shadow-probe, namespace: default}}
spec:
  modelRef: widget-search
  weights:
    - {{version: 1.0.0, weight: {stable}}}
{canary}  shadow: {shadow}
"""


def _apply(cp: ControlPlane, doc: str) -> tuple[int, str]:
    proc = cp.kubectl("apply", "--dry-run=server", "-f", "-", stdin=doc, check=False)
    return proc.returncode, proc.stderr


def test_shadow_schema_and_cel_in_the_api_server(control_plane: ControlPlane) -> None:
    control_plane.clear_admission()  # the schema and CEL alone: no operator runs here
    ok, err = _apply(control_plane, POLICY.format(
        stable=90, canary="    - {version: 1.1.0, weight: 10}\n",
        shadow="{version: 1.1.0, percent: 25}"))
    assert ok == 0, err
    code, err = _apply(control_plane, POLICY.format(
        stable=100, canary="", shadow="{version: 1.0.0, percent: 25}"))
    assert code != 0 and "[policy.shadow-not-full-weight]" in err
    code, err = _apply(control_plane, POLICY.format(
        stable=100, canary="", shadow="{version: 2.0.0, percent: 0}"))
    assert code != 0 and "spec.shadow.percent" in err
    # the invalid example, as `cadml validate` refuses it, is refused here too
    bad = (EXAMPLES / "invalid" / "policy-shadow-not-full-weight.yaml").read_text()
    policy = bad.split("---")[-1].replace("initech-cad", "default")
    code, err = _apply(control_plane, policy)
    assert code != 0 and "[policy.shadow-not-full-weight]" in err
