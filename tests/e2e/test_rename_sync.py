"""A rename through a GitOps sync on the real API server: `kubectl apply --prune` creates
the new object before it prunes the old one (Argo CD orders a sync the same way), so the
webhook must admit the newcomer, the old object's finalizer must let it go although its
semver still carries traffic, and the store must carry the row over to the new name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES
from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

PART_OF = "cadml-rename-e2e"
KINDS = ("Model", "ModelVersion", "RolloutPolicy", "ReleaseRecord")
# kubectl's default prune allowlist has no custom resources: name ours
SYNC = ("apply", "--prune", "-l", f"app.kubernetes.io/part-of={PART_OF}",
        *(f"--prune-allowlist=cadml.io/v1alpha1/{kind}" for kind in KINDS))
# the same semver under a new object name: a routed CANARY (10 %) and a STABLE (80 %),
# neither named by a ReleaseRecord (records are immutable and name versions by object)
RENAMES = {"part-similarity-1-2-0": "part-similarity-v1-2-0",
           "assembly-match-2-0-0": "assembly-match-v2-0-0"}
SEMVER = {"part-similarity-1-2-0": "1.2.0", "assembly-match-2-0-0": "2.0.0"}
WEIGHT = {"part-similarity-1-2-0": 10, "assembly-match-2-0-0": 80}


def _write_repo(repo: Path, ns: str, renames: dict[str, str]) -> Path:
    """The acme-cad example tenant as a GitOps directory of namespace `ns`, every object
    labelled for the prune selector, ModelVersions named as `renames` says."""
    repo.mkdir(parents=True, exist_ok=True)
    for path in sorted((EXAMPLES / "tenants" / "acme-cad").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for d in docs:
            meta = d["metadata"]
            meta["namespace"] = ns
            meta.setdefault("labels", {})["app.kubernetes.io/part-of"] = PART_OF
            if d["kind"] == "ModelVersion":
                meta["name"] = renames.get(meta["name"], meta["name"])
        (repo / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return repo


def _items(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    out = cp.kubectl("get", "models,modelversions,rolloutpolicies,releaserecords", "-n", ns,
                     "-o", "json").stdout
    return json.loads(out)["items"]  # type: ignore[no-any-return]


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object's Ready condition when it is current (observedGeneration), else None."""
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    cond: dict[str, Any] | None = next(
        (c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    if cond is None or cond.get("observedGeneration") != gen:
        return None
    return cond


def _all_ready(cp: ControlPlane, ns: str, names: set[str]) -> bool:
    items = _items(cp, ns)
    return {i["metadata"]["name"] for i in items} == names and all(
        (c := _ready(i)) and c["status"] == "True" for i in items)


def _names(repo: Path) -> set[str]:
    return {d["metadata"]["name"] for p in repo.glob("*.yaml")
            for d in yaml.safe_load_all(p.read_text()) if d}


def _routing(op: Operator, ns: str) -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """policy → (policyVersion, routes (semver, weight, version row id)) of its newest
    snapshot in the store."""
    rows = op.rows("SELECT p.name, ps.policy_version, pr.version, pr.weight, "
                   "pr.model_version_id FROM policy_snapshot ps JOIN model_rollout_policy p "
                   "ON p.id = ps.policy_id JOIN policy_route pr ON pr.snapshot_id = ps.id "
                   f"WHERE p.tenant_id = '{ns}' AND ps.policy_version = (SELECT "
                   "max(policy_version) FROM policy_snapshot WHERE policy_id = p.id) "
                   "ORDER BY p.name, pr.version")
    out: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}
    for policy, pv, semver, weight, version_id in rows:
        out.setdefault(policy, (pv, []))[1].append((semver, weight, version_id))
    return out


def _version_rows(op: Operator, ns: str, semver: str) -> list[tuple[Any, ...]]:
    """(id, name, deleted) of every store row of that semver in the tenant."""
    return op.rows(f"SELECT id, name, deleted FROM model_version WHERE tenant_id = '{ns}' "
                   f"AND version = '{semver}' ORDER BY id")


def _synced_tenant(cp: ControlPlane, op: Operator, tmp_path: Path, ns: str) -> Path:
    """The tenant applied from its GitOps directory with the prune sync, everything Ready."""
    cp.kubectl("create", "namespace", ns, check=False)
    repo = _write_repo(tmp_path / "repo", ns, {})
    cp.kubectl(*SYNC, "-f", str(repo))
    try:
        wait_for(lambda: _all_ready(cp, ns, _names(repo)), timeout=120,
                 what=f"every object of {ns} Ready")
    except AssertionError:
        print(op.tail())
        raise
    return repo


def _assert_converged(cp: ControlPlane, op: Operator, ns: str, repo: Path,
                      before: dict[str, tuple[int, list[tuple[str, int, int]]]],
                      ids: dict[str, int], audit_from: int) -> None:
    """After the prune sync: only the new names in the API server, all Ready; one live
    store row per semver, the same row (its history) under the new name, audited as a
    rename; routing exactly as before."""
    try:
        wait_for(lambda: _all_ready(cp, ns, _names(repo)), timeout=120,
                 what="the renamed tenant Ready with the old objects gone")
    except AssertionError:
        print(op.tail())
        raise
    for old, new in RENAMES.items():
        gone = cp.kubectl("get", "mv", "-n", ns, old, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr
        renamed = get(cp, "mv", ns, new)
        assert renamed["spec"]["version"] == SEMVER[old]
        assert renamed["status"]["servingWeight"] == WEIGHT[old]  # it carries the traffic
        assert _version_rows(op, ns, SEMVER[old]) == [(ids[old], new, False)]
    audit = op.rows("SELECT action, object_name, details FROM audit_event WHERE tenant_id = "
                    f"'{ns}' AND object_kind = 'ModelVersion' AND id > {audit_from} "
                    "ORDER BY id")
    for old, new in RENAMES.items():
        mine = [(a, n) for a, n, _ in audit if n in (old, new)]
        assert mine == [("delete-requested", old), ("rename", new)], audit
        details = next(d for a, n, d in audit if (a, n) == ("rename", new))
        details = json.loads(details) if isinstance(details, str) else details
        assert details["previousName"] == old
    assert _routing(op, ns) == before  # same policyVersion, same routes, same rows
    summary = get(cp, "rp", ns, "part-similarity")["status"]["routingSummary"]
    assert summary == "1.1.0=90,1.2.0=10"
    assert get(cp, "model", ns, "assembly-match")["status"]["stableVersion"] == "2.0.0"


def _audit_head(op: Operator) -> int:
    return int(op.rows("SELECT coalesce(max(id), 0) FROM audit_event")[0][0])


def test_a_rename_converges_through_one_prune_sync(control_plane: ControlPlane,
                                                   operator: Operator,
                                                   tmp_path: Path) -> None:
    """One `kubectl apply --prune` of the renamed directory: it exits 0 (the newcomers
    admitted, the old objects pruned) and the tenant converges with no manual step."""
    ns = "rename-sync"
    _synced_tenant(control_plane, operator, tmp_path, ns)
    before = _routing(operator, ns)
    ids = {old: _version_rows(operator, ns, semver)[0][0] for old, semver in SEMVER.items()}
    audit_from = _audit_head(operator)

    repo = _write_repo(tmp_path / "repo", ns, RENAMES)
    assert not set(RENAMES) & _names(repo)  # the directory names only the new objects
    proc = control_plane.kubectl(*SYNC, "-f", str(repo), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for old, new in RENAMES.items():
        assert f"modelversion.cadml.io/{new} created" in proc.stdout
        assert f"modelversion.cadml.io/{old} pruned" in proc.stdout
    _assert_converged(control_plane, operator, ns, repo, before, ids, audit_from)


def test_while_both_exist_the_newcomer_waits_for_the_old_one(control_plane: ControlPlane,
                                                             operator: Operator,
                                                             tmp_path: Path) -> None:
    """Applied without prune first, both names live: the newcomer is Ready=False/Waiting
    and says which object it waits for, the old one keeps serving; the prune sync then
    completes the rename."""
    ns = "rename-wait"
    _synced_tenant(control_plane, operator, tmp_path, ns)
    before = _routing(operator, ns)
    ids = {old: _version_rows(operator, ns, semver)[0][0] for old, semver in SEMVER.items()}
    audit_from = _audit_head(operator)

    repo = _write_repo(tmp_path / "repo", ns, RENAMES)
    control_plane.kubectl("apply", "-f", str(repo))

    def waiting(new: str) -> dict[str, Any] | None:
        cond = _ready(get(control_plane, "mv", ns, new))
        return cond if cond and cond["reason"] == "Waiting" else None

    for old, new in RENAMES.items():
        cond = wait_for(lambda new=new: waiting(new), what=f"{new} Waiting")
        assert cond["status"] == "False"
        assert old in cond["message"] and "version.semver-unique" in cond["message"]
        still = _ready(get(control_plane, "mv", ns, old))
        assert still is not None and still["status"] == "True"  # the old one still serves
        assert _version_rows(operator, ns, SEMVER[old]) == [(ids[old], old, False)]
    assert _routing(operator, ns) == before

    proc = control_plane.kubectl(*SYNC, "-f", str(repo), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for old in RENAMES:
        assert f"modelversion.cadml.io/{old} pruned" in proc.stdout
    _assert_converged(control_plane, operator, ns, repo, before, ids, audit_from)
