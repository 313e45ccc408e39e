"""End to end against a real kube-apiserver + etcd, with `cadml run` operating for real."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

KINDS = ("models", "modelversions", "rolloutpolicies", "releaserecords")


def _ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    gen = obj["metadata"].get("generation")
    return bool(cond and cond["status"] == "True" and cond.get("observedGeneration") == gen
                and status.get("observedGeneration") == gen)


def _all(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    out = json.loads(cp.kubectl("get", ",".join(KINDS), "-n", ns, "-o", "json").stdout)
    return out["items"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def applied(control_plane: ControlPlane, operator: Operator) -> ControlPlane:
    for ns in ("acme-cad", "globex-cad"):
        control_plane.kubectl("create", "namespace", ns, check=False)
    control_plane.kubectl("apply", "-R", "-f", str(EXAMPLES / "tenants"))

    def everything_ready() -> bool:
        items = _all(control_plane, "acme-cad") + _all(control_plane, "globex-cad")
        return len(items) == 21 and all(_ready(i) for i in items)

    try:
        wait_for(everything_ready, timeout=120, what="every example object Ready")
    except AssertionError:
        print(operator.tail())
        raise
    return control_plane


def test_printer_columns_and_category(applied: ControlPlane) -> None:
    out = applied.kubectl("get", "rolloutpolicies", "-n", "acme-cad").stdout
    assert "WEIGHTS" in out and "1.1.0=90,1.2.0=10" in out and "POLICY" in out
    versions = applied.kubectl("get", "mv", "-n", "acme-cad").stdout
    assert "STAGE" in versions and "CANARY" in versions and "DEPRECATED" in versions
    everything = applied.kubectl("get", "cadml", "-A").stdout
    assert "releaserecord.cadml.io/rel-2026-09-02-part-sim-1-1-0" in everything
    explain = applied.kubectl("explain", "rolloutpolicy.spec.refreshSeconds").stdout
    assert "re-read" in explain


def test_cel_rules_refuse_in_the_api_server(applied: ControlPlane) -> None:
    bad = (EXAMPLES / "invalid" / "policy-weights-sum.yaml").read_text()
    ns_bad = bad.replace("initech-cad", "acme-cad").replace("widget-search", "cel-probe")
    proc = applied.kubectl("apply", "-f", "-", stdin=ns_bad, check=False)
    assert proc.returncode != 0
    assert "[policy.weights-sum-100] weights must sum to exactly 100" in proc.stderr
    control = (EXAMPLES / "invalid" / "model-review-control.yaml").read_text().replace(
        "initech-cad", "acme-cad").replace("widget-search", "cel-probe-2")
    proc = applied.kubectl("apply", "-f", "-", stdin=control, check=False)
    assert proc.returncode != 0 and "[model.review-control-allowed]" in proc.stderr


def test_webhook_refuses_a_second_stable(applied: ControlPlane) -> None:
    proc = applied.kubectl("patch", "mv", "-n", "acme-cad", "part-similarity-1-2-0",
                           "--type=merge", "-p", '{"spec":{"stage":"STABLE"}}', check=False)
    assert proc.returncode != 0
    assert "version.one-stable" in proc.stderr and "DEPRECATED" in proc.stderr
    assert get(applied, "mv", "acme-cad", "part-similarity-1-2-0")["spec"]["stage"] == "CANARY"


def test_release_records_are_immutable(applied: ControlPlane) -> None:
    proc = applied.kubectl("patch", "releaserecord", "-n", "acme-cad",
                           "rel-2026-09-02-part-sim-1-1-0", "--type=merge",
                           "-p", '{"spec":{"canaryPercent":50}}', check=False)
    assert proc.returncode != 0 and "[release.immutable]" in proc.stderr


def _store_rows(op: Operator, sql: str) -> list[tuple[Any, ...]]:
    return op.rows(sql)


def test_moving_weights_and_rolling_back_raise_policy_version(applied: ControlPlane,
                                                              operator: Operator) -> None:
    before = get(applied, "rp", "acme-cad", "part-similarity")["status"]["policyVersion"]
    applied.kubectl("patch", "rp", "-n", "acme-cad", "part-similarity", "--type=merge", "-p",
                    '{"spec":{"weights":[{"version":"1.1.0","weight":75},'
                    '{"version":"1.2.0","weight":25}]}}')
    moved = wait_for(lambda: (s := get(applied, "rp", "acme-cad", "part-similarity")["status"])
                     ["policyVersion"] == before + 1 and s, what="policyVersion + 1")
    assert moved["routingSummary"] == "1.1.0=75,1.2.0=25"
    applied.kubectl("patch", "rp", "-n", "acme-cad", "part-similarity", "--type=merge", "-p",
                    '{"spec":{"weights":[{"version":"1.1.0","weight":100}]}}')
    rolled = wait_for(lambda: (s := get(applied, "rp", "acme-cad", "part-similarity")["status"])
                      ["policyVersion"] == before + 2 and s, what="rollback published")
    assert rolled["routingSummary"] == "1.1.0=100"
    rows = _store_rows(operator, "SELECT ps.policy_version, pr.version, pr.weight FROM "
                                 "policy_snapshot ps JOIN policy_route pr ON pr.snapshot_id = "
                                 "ps.id JOIN model_rollout_policy p ON p.id = ps.policy_id "
                                 "WHERE p.name = 'part-similarity' ORDER BY ps.policy_version")
    assert (before + 2, "1.1.0", 100) in rows and (before, "1.2.0", 10) in rows  # history kept


def test_emergency_rollback_from_the_cli_patches_the_live_policy(applied: ControlPlane,
                                                                 operator: Operator) -> None:
    """`cadml rollback --cluster` against the real API server: an override the operator
    publishes at once, and the annotation saying Git must follow."""
    import subprocess
    import sys

    before = get(applied, "rp", "acme-cad", "part-similarity")["status"]["policyVersion"]
    proc = subprocess.run([sys.executable, "-m", "controller", "rollback",
                           "acme-cad/part-similarity", "--to", "1.1.0", "--cluster",
                           "--reason", "INC-9: flanges misrouted", "--actor", "oncall"],
                          env=applied.env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Git must follow" in proc.stdout
    live = get(applied, "rp", "acme-cad", "part-similarity")
    assert live["metadata"]["annotations"]["cadml.io/git-must-follow"] == "true"
    assert live["spec"]["override"]["version"] == "1.1.0"
    wait_for(lambda: get(applied, "rp", "acme-cad", "part-similarity")["status"]
             ["policyVersion"] == before + 1, what="override published")
    (source,) = _store_rows(operator, "SELECT ps.source FROM policy_snapshot ps JOIN "
                                      "model_rollout_policy p ON p.id = ps.policy_id WHERE "
                                      "p.name = 'part-similarity' ORDER BY ps.policy_version "
                                      "DESC LIMIT 1")[0:1]
    assert source == ("override",)
    applied.kubectl("patch", "rp", "-n", "acme-cad", "part-similarity", "--type=merge", "-p",
                    '{"spec":{"override":null}}')  # Git caught up: the override goes


def test_audit_names_the_authenticated_user(applied: ControlPlane, operator: Operator) -> None:
    """The mutating webhook stamps who changed the spec (from the API server's userInfo);
    the audit row of that change names them, and typing the annotation changes nothing."""
    as_alice = ("--as=alice@example.com", "--as-group=system:masters")
    applied.kubectl("patch", "model", "-n", "globex-cad", "drawing-dedup", "--type=merge",
                    "-p", '{"spec":{"description":"changed by alice"}}', *as_alice)
    model = get(applied, "model", "globex-cad", "drawing-dedup")
    assert model["metadata"]["annotations"]["cadml.io/changed-by"] == "alice@example.com"
    gen = model["metadata"]["generation"]
    wait_for(lambda: get(applied, "model", "globex-cad", "drawing-dedup")["status"]
             .get("observedGeneration") == gen, what="alice's change handled")
    rows = _store_rows(operator, "SELECT actor FROM audit_event WHERE object_kind = 'Model' "
                                 "AND object_name = 'drawing-dedup' ORDER BY id DESC LIMIT 1")
    assert rows == [("k8s:alice@example.com",)]
    applied.kubectl("annotate", "model", "-n", "globex-cad", "drawing-dedup", "--overwrite",
                    "cadml.io/changed-by=mallory")  # no spec change: the stamp stays
    annotations = get(applied, "model", "globex-cad", "drawing-dedup")["metadata"]["annotations"]
    assert annotations["cadml.io/changed-by"] == "alice@example.com"


def test_the_operator_manages_both_webhook_configurations(applied: ControlPlane) -> None:
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        conf = json.loads(applied.kubectl("get", kind, "admission.cadml.io", "-o", "json")
                          .stdout)
        hooks = conf["webhooks"]
        assert len(hooks) == 4  # one per kind
        assert {h["failurePolicy"] for h in hooks} == {"Fail"}  # the default
        assert all(h["clientConfig"].get("caBundle") for h in hooks)
        # reached through the operator's Service (as in a cluster), not a URL
        assert {(h["clientConfig"]["service"]["namespace"], h["clientConfig"]["service"]["name"],
                 h["clientConfig"]["service"]["port"]) for h in hooks} == {
            ("cadml-system", "cadml-operator", 443)}


def test_models_own_their_worker_deployments(applied: ControlPlane) -> None:
    dep = wait_for(lambda: get(applied, "deployment", "acme-cad",
                               "cadml-worker-part-similarity"), what="worker Deployment")
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Model" and owner["name"] == "part-similarity"
    assert dep["spec"]["replicas"] == 2
    model = get(applied, "model", "acme-cad", "part-similarity")
    assert model["status"]["workersReady"] == "0/2"  # no kubelet here: no pods run


def test_two_replicas_elect_one_active_and_fail_over(applied: ControlPlane, operator: Operator,
                                                     tmp_path_factory: Any) -> None:
    """kopf peering: a lower-priority replica stands by (kopf starts paused and stays so
    while a higher peer lives); when the active one leaves, it resumes and handles changes."""
    second = Operator(applied, tmp_path_factory.mktemp("operator-2"), priority=1,
                      kubeconfig=operator.kubeconfig, service=operator.service,
                      env=operator.env)  # a replica of the Deployment: same certificate
    second.store_url = operator.store_url  # replicas share the store, as in a Deployment

    def handled(op: Operator) -> int:
        return op.tail(100_000).count("Handler 'reconcile' succeeded")

    def touch(text: str) -> None:
        applied.kubectl("patch", "model", "-n", "acme-cad", "assembly-match", "--type=merge",
                        "-p", json.dumps({"spec": {"description": text}}))

    second.start()
    try:
        time.sleep(5)  # the standby sees the active peer in the peering object
        gen = get(applied, "model", "acme-cad", "assembly-match")["metadata"]["generation"]
        before = handled(operator)
        touch("while two replicas run")
        wait_for(lambda: (m := get(applied, "model", "acme-cad", "assembly-match"))
                 ["status"]["observedGeneration"] == gen + 1 and m, what="handled")
        time.sleep(2)
        assert handled(operator) > before and handled(second) == 0  # only the active one
        operator.stop()  # a graceful exit removes its peering record; its webhooks stay
        applied.route_service("cadml-system", "cadml-operator", 443, second.webhook_port)
        wait_for(lambda: "resuming operations" in second.tail(2000).lower(), timeout=90,
                 what="the standby takes over")
        touch("after fail-over")
        wait_for(lambda: get(applied, "model", "acme-cad", "assembly-match")["status"]
                 ["observedGeneration"] == gen + 2, timeout=60, what="the standby handles it")
        assert handled(second) > 0
    finally:
        second.stop()
        applied.route_service("cadml-system", "cadml-operator", 443, operator.webhook_port)
        if operator.proc is None:
            operator.start()  # leave the module's operator running for later tests


def test_operator_restart_converges_without_duplicate_audit(applied: ControlPlane,
                                                            operator: Operator) -> None:
    def settled() -> int | None:  # no audit row for 6 s: earlier changes are all handled
        first = _store_rows(operator, "SELECT count(*) FROM audit_event")[0][0]
        time.sleep(6)
        last = _store_rows(operator, "SELECT count(*) FROM audit_event")[0][0]
        return last if last == first else None

    count = wait_for(settled, timeout=90, every=0.1, what="the audit trail at rest")
    operator.stop(kill=True)  # as if the pod died mid-way
    operator.start()
    items = wait_for(lambda: (i := _all(applied, "acme-cad")) and all(_ready(x) for x in i)
                     and i, what="Ready after restart")
    assert items
    time.sleep(8)  # resume handlers and at least one repair timer (5 s) run meanwhile
    new = _store_rows(operator, "SELECT action, object_kind, object_name FROM audit_event "
                                "ORDER BY id")[count:]
    assert new == []  # no duplicate audit rows after the restart


def test_api_server_restart_is_survived(applied: ControlPlane, operator: Operator) -> None:
    applied.restart_apiserver()
    applied.kubectl("patch", "model", "-n", "globex-cad", "fastener-lookup", "--type=merge",
                    "-p", '{"spec":{"displayName":"Fastener lookup (renamed)"}}')
    status = wait_for(lambda: (m := get(applied, "model", "globex-cad", "fastener-lookup"))
                      and _ready(m) and m["metadata"]["generation"] == 2 and m["status"],
                      timeout=90, what="operator handles changes after the restart")
    assert status["observedGeneration"] == 2


def test_deleting_a_model_garbage_collects_its_workers(applied: ControlPlane,
                                                       operator: Operator) -> None:
    as_carol = ("--as=carol@example.com", "--as-group=system:masters")
    applied.kubectl("delete", "rp", "-n", "globex-cad", "fastener-lookup", "--dry-run=server",
                    *as_carol)  # a dry run deletes and audits nothing
    applied.kubectl("delete", "rp", "-n", "globex-cad", "fastener-lookup", "--wait=true",
                    *as_carol)
    # the only STABLE version of a Model that exists cannot go (its workers serve it)
    applied.kubectl("delete", "mv", "-n", "globex-cad", "fastener-lookup-3-4-1", "--wait=false",
                    *as_carol)
    wait_for(lambda: "fastener-lookup-3-4-1 is the only STABLE version" in operator.tail(400),
             timeout=30, what="the finalizer refusing the version's deletion")
    assert get(applied, "mv", "globex-cad", "fastener-lookup-3-4-1")["metadata"][
        "deletionTimestamp"]
    applied.kubectl("delete", "model", "-n", "globex-cad", "fastener-lookup", "--wait=true",
                    *as_carol)
    applied.kubectl("wait", "--for=delete", "mv/fastener-lookup-3-4-1", "-n", "globex-cad",
                    "--timeout=60s")
    wait_for(lambda: applied.kubectl("get", "deployment", "-n", "globex-cad",
                                     "cadml-worker-fastener-lookup", check=False).returncode != 0,
             timeout=60, what="worker Deployment garbage-collected")
    rows = _store_rows(operator, "SELECT object_kind, action, actor FROM audit_event WHERE "
                                 "tenant_id = 'globex-cad' AND object_name LIKE "
                                 "'fastener-lookup%' AND action LIKE 'delete%' ORDER BY id")
    carol = "k8s:carol@example.com"
    assert rows == [("RolloutPolicy", "delete-requested", carol),
                    ("RolloutPolicy", "delete", carol),
                    ("ModelVersion", "delete-requested", carol),
                    ("Model", "delete-requested", carol),
                    ("Model", "delete", carol),
                    ("ModelVersion", "delete", carol)]


def test_a_worker_process_follows_a_rollback_within_one_refresh(
    applied: ControlPlane, operator: Operator, corpus_index: Any, tmp_path: Any
) -> None:
    import subprocess
    import sys
    import urllib.request

    from controller.routing import bucket
    from tests.e2e.controlplane import free_port

    uri, sha = corpus_index.manifest_path.as_uri(), corpus_index.manifest_sha256

    def version(name: str, semver: str, stage: str) -> str:
        return (f"apiVersion: cadml.io/v1alpha1\nkind: ModelVersion\nmetadata: {{name: {name}, "
                f"namespace: acme-cad}}\nspec:\n  modelRef: finder\n  version: {semver}\n"
                f"  stage: {stage}\n  artifact: {{uri: '{uri}', sha256: {sha}, "
                f"format: faiss-index}}\n")

    docs = "---\n".join([
        "apiVersion: cadml.io/v1alpha1\nkind: Model\nmetadata: {name: finder, namespace: "
        "acme-cad}\nspec: {modelKey: finder, provider: acme, displayName: Finder, "
        "workers: {replicas: 0}}\n",
        version("finder-1-0-0", "1.0.0", "STABLE"), version("finder-1-1-0", "1.1.0", "CANARY"),
        "apiVersion: cadml.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: finder, namespace: "
        "acme-cad}\nspec:\n  modelRef: finder\n  refreshSeconds: 2\n  weights:\n"
        "    - {version: 1.0.0, weight: 50}\n    - {version: 1.1.0, weight: 50}\n"])
    applied.kubectl("apply", "-f", "-", stdin=docs)
    wait_for(lambda: get(applied, "rp", "acme-cad", "finder").get("status", {})
             .get("policyVersion") == 1, what="finder policy published")
    port = free_port()
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "controller", "worker", "--model",
                               "acme-cad/finder", "--port", str(port), "--host", "127.0.0.1"],
                              env={**applied.env(), "CADML_STORE_URL": operator.store_url},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200,
                 what="worker ready")
        job = next(f"job-{i}" for i in range(1000) if bucket(f"job-{i}") >= 50)
        vector = [0.0] * 24

        def served() -> str:
            req = urllib.request.Request(f"{base}/v1/search", method="POST",
                                         data=json.dumps({"vector": vector, "jobId": job})
                                         .encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return str(json.loads(resp.read())["version"])

        assert served() == "1.1.0"
        applied.kubectl("patch", "rp", "-n", "acme-cad", "finder", "--type=merge", "-p",
                        '{"spec":{"weights":[{"version":"1.0.0","weight":100}]}}')
        wait_for(lambda: get(applied, "rp", "acme-cad", "finder")["status"]["policyVersion"]
                 == 2, every=0.05, what="rollback published")
        published = time.monotonic()
        wait_for(lambda: served() == "1.0.0", every=0.05, timeout=10, what="stable served")
        # within one refresh cycle: refreshSeconds (2 s) plus the reload itself and this
        # poll's own HTTP round trip, allowed 0.5 s together on a loaded CI machine
        assert time.monotonic() - published <= 2.5
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()


def _webhook_counts(cp: ControlPlane) -> tuple[int, int]:
    """(validating, mutating) webhooks in the `admission.cadml.io` configurations."""
    out = cp.kubectl("get", "validatingwebhookconfiguration/admission.cadml.io",
                     "mutatingwebhookconfiguration/admission.cadml.io", "-o", "json",
                     check=False).stdout
    items = json.loads(out or '{"items": []}')["items"]
    by_kind = {i["kind"]: len(i.get("webhooks") or []) for i in items}
    return (by_kind.get("ValidatingWebhookConfiguration", 0),
            by_kind.get("MutatingWebhookConfiguration", 0))


def _second_stable(cp: ControlPlane) -> Any:
    return cp.kubectl("patch", "mv", "-n", "acme-cad", "assembly-match-2-1-0", "--type=merge",
                      "-p", '{"spec":{"stage":"STABLE"}}', check=False)


def test_admission_holds_through_a_rolling_handover(applied: ControlPlane, operator: Operator,
                                                    tmp_path_factory: Any) -> None:
    """The chart's two replicas, both endpoints of the webhook Service and sharing one
    serving certificate (cert-manager's Secret): the standby answers admission like the
    active one, and SIGTERM of the active one (a rolling update) leaves both webhook
    configurations populated throughout the handover; a second STABLE is never admitted."""
    import threading

    operator.stop()  # the module's operator is replaced by the two replicas below
    active, standby = (Operator(applied, tmp_path_factory.mktemp(f"replica-{p}"), priority=p,
                                kubeconfig=operator.kubeconfig, service=operator.service,
                                env=operator.env)  # one certificate, as from cert-manager
                       for p in (2**31, 1))
    counts: list[tuple[int, int]] = []
    watching = threading.Event()

    def watch() -> None:
        while watching.is_set():
            counts.append(_webhook_counts(applied))

    poller = threading.Thread(target=watch, daemon=True)
    try:
        for op in (active, standby):
            op.store_url, op.admin_url = operator.store_url, operator.admin_url
            op.start()
        applied.route_service("cadml-system", "cadml-operator", 443, active.webhook_port)
        wait_for(lambda: _webhook_counts(applied) == (4, 4), what="both configurations")
        def peers() -> set[int]:
            peering = json.loads(applied.kubectl("get", "clusterkopfpeering", "cadml", "-o",
                                                 "json").stdout)
            return {int(p["priority"]) for p in (peering.get("status") or {}).values()}

        wait_for(lambda: peers() == {2**31, 1}, timeout=60, what="both replicas peer")
        # the standby is an endpoint of the Service too: it refuses like the active one
        applied.route_service("cadml-system", "cadml-operator", 443, standby.webhook_port)
        proc = wait_for(lambda: (p := _second_stable(applied)) and "failed calling webhook"
                        not in p.stderr and p, timeout=30, what="the standby's webhook answers")
        assert proc.returncode != 0 and "version.one-stable" in proc.stderr, proc.stderr

        applied.route_service("cadml-system", "cadml-operator", 443, active.webhook_port)
        def resumed() -> int:
            return standby.tail(100_000).lower().count("resuming operations")

        paused_at = resumed()  # it resumed once before the active replica peered
        watching.set()
        poller.start()
        assert active.proc is not None
        active.proc.terminate()  # SIGTERM, as a rolling update does; the endpoints
        applied.route_service("cadml-system", "cadml-operator", 443, standby.webhook_port)
        deadline = time.monotonic() + 60
        while resumed() == paused_at:
            assert time.monotonic() < deadline, "the standby did not take over:\n" + \
                standby.tail()
            assert _second_stable(applied).returncode != 0  # refused throughout
        active.proc.wait(timeout=30)
        proc = _second_stable(applied)  # after the handover: refused by the webhook
        assert proc.returncode != 0 and "version.one-stable" in proc.stderr, proc.stderr
        applied.kubectl("patch", "model", "-n", "acme-cad", "assembly-match", "--type=merge",
                        "-p", '{"spec":{"description":"after the handover"}}',
                        "--as=alice@example.com", "--as-group=system:masters")
        annotations = get(applied, "model", "acme-cad", "assembly-match")["metadata"][
            "annotations"]
        assert annotations["cadml.io/changed-by"] == "alice@example.com"
        probe = get(applied, "mv", "acme-cad", "assembly-match-2-2-0-beta")
        probe = {"apiVersion": probe["apiVersion"], "kind": "ModelVersion",
                 "metadata": {"name": "handover-probe", "namespace": "acme-cad"},
                 "spec": {**probe["spec"], "version": "0.0.1-probe", "stage": "DEPRECATED"}}
        applied.kubectl("apply", "-f", "-", stdin=json.dumps(probe))
        applied.kubectl("delete", "mv", "-n", "acme-cad", "handover-probe", "--wait=false",
                        "--as=alice@example.com", "--as-group=system:masters")
        assert standby.rows("SELECT actor FROM audit_event WHERE action = 'delete-requested' "
                            "AND object_name = 'handover-probe'") == [("k8s:alice@example.com",)]
        watching.clear()
        poller.join(timeout=30)
        assert counts and set(counts) == {(4, 4)}, sorted(set(counts))
        assert get(applied, "mv", "acme-cad", "assembly-match-2-1-0")["spec"]["stage"] \
            == "CANARY"
    finally:
        watching.clear()
        for op in (active, standby):
            op.stop()
        applied.route_service("cadml-system", "cadml-operator", 443, operator.webhook_port)
        operator.start()  # leave the module's operator running for later tests
