"""Git mode through the CLI: no accidental prune, and one tenant's failure is contained.

Every case runs `python -m controller reconcile` on a real Git repository (a copy of
examples/tenants) into a real store, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from controller.store import Store
from tests.conftest import ROOT, git
from tests.reconcile.test_gitmode import _commit as edit
from tests.stores import Backend, refuse_version, stop_refusing

ACME, GLOBEX = "acme-cad", "globex-cad"
PART = "tenants/acme-cad/part-similarity.yaml"
DEDUP = "tenants/globex-cad/drawing-dedup.yaml"
ACME_CANARY = "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n"
OVERRIDE = ("  override:\n    version: 0.9.0\n    reason: \"INC-4412: 1.0.0 flags revisions "
            "of the same sheet as distinct drawings\"\n")
DEDUP_CANARY = "    - {version: 0.9.0, weight: 75}\n    - {version: 1.0.0, weight: 25}\n"
DEDUP_ROLLBACK = "    - {version: 0.9.0, weight: 100}\n"
NEW_DRAFT = """---
apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata:
  name: part-similarity-9-9-9
  namespace: acme-cad
spec:
  modelRef: part-similarity
  version: 9.9.9
  stage: DRAFT
  artifact:
    uri: file:///var/lib/cadml/artifacts/part-sim-9.9.9.npz
    format: npz
  featureVersion: v4
"""


def cadml(backend: Backend, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "reconcile", "--repo", str(repo),
         "--store", backend.app_url, *args],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def audit_rows(store: Store, tenant: str) -> list[tuple[str, str, str]]:
    with store.transaction(tenant, "t") as tx:
        return [(e.action, e.object_kind, e.object_name) for e in tx.audit_events()]


def deleted_rows(backend: Backend) -> int:
    with backend.admin.connect() as c:
        return sum(int(c.execute(text(f"SELECT count(*) FROM {table} WHERE deleted")).scalar()
                       or 0)
                   for table in ("model_catalog", "model_version", "model_rollout_policy"))


def routes(store: Store, tenant: str, model: str) -> tuple[int, list[tuple[str, int]]]:
    with store.transaction(tenant, "t") as tx:
        snap = tx.snapshot(model)
    assert snap is not None
    return snap.policy_version, [(r.version, r.weight) for r in snap.routes]


def condition(store: Store, tenant: str, kind: str, name: str, type_: str) -> dict[str, str]:
    with store.transaction(tenant, "t") as tx:
        status = tx.statuses()[(kind, name)]
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.fixture
def reconciled(backend: Backend, gitops_repo: Path) -> Path:
    """The examples reconciled once, globex's drawing-dedup serving a 25 % canary."""
    edit(gitops_repo, DEDUP, OVERRIDE, "", "investigation over: canary back on")
    first = cadml(backend, gitops_repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert routes(backend.store, GLOBEX, "drawing-dedup") == (1, [("0.9.0", 75), ("1.0.0", 25)])
    return gitops_repo


# ---------------------------------------------------------------- no accidental prune

@pytest.mark.parametrize(("prefix", "shown"), [
    ("tenants-typo/", "the tree holds: tenants/"),
    ("tenants/acme-typo", "tenants/ holds: acme-cad/, globex-cad/"),
])
def test_a_prefix_that_selects_nothing_exits_2_and_changes_nothing(
        backend: Backend, reconciled: Path, prefix: str, shown: str) -> None:
    before = {t: audit_rows(backend.store, t) for t in (ACME, GLOBEX)}
    proc = cadml(backend, reconciled, prefix)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert prefix.rstrip("/") + "/ selects no YAML file" in proc.stderr and shown in proc.stderr
    assert {t: audit_rows(backend.store, t) for t in (ACME, GLOBEX)} == before
    assert deleted_rows(backend) == 0


def test_a_prefix_naming_one_tenant_leaves_the_others_alone(backend: Backend,
                                                            reconciled: Path) -> None:
    before = audit_rows(backend.store, GLOBEX)
    edit(reconciled, PART, ACME_CANARY, ACME_CANARY.replace("90", "80").replace("10", "20"),
         "acme canary to 20 %")
    proc = cadml(backend, reconciled, "tenants/acme-cad/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert routes(backend.store, ACME, "part-similarity") == (2, [("1.1.0", 80), ("1.2.0", 20)])
    assert GLOBEX not in proc.stdout
    assert audit_rows(backend.store, GLOBEX) == before
    assert deleted_rows(backend) == 0


def test_removing_a_tenant_needs_prune_and_says_what_would_go(backend: Backend,
                                                              reconciled: Path) -> None:
    git(reconciled, "rm", "-rq", "tenants/globex-cad")
    git(reconciled, "commit", "-qm", "globex leaves")
    edit(reconciled, PART, ACME_CANARY, "    - version: 1.1.0\n      weight: 100\n",
         "acme rolls back in the same push")
    globex_before = audit_rows(backend.store, GLOBEX)

    refused = cadml(backend, reconciled)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "globex-cad: FAILED (PruneRefused)" in refused.stdout
    for kind, name in (("Model", "drawing-dedup"), ("ModelVersion", "fastener-lookup-3-4-1"),
                       ("RolloutPolicy", "fastener-lookup")):
        assert f"would delete {kind} globex-cad/{name}" in refused.stdout
    assert audit_rows(backend.store, GLOBEX) == globex_before and deleted_rows(backend) == 0
    assert routes(backend.store, ACME, "part-similarity") == (2, [("1.1.0", 100)])
    stalled = condition(backend.store, GLOBEX, "Model", "drawing-dedup", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PruneRefused"
    assert "--prune" in stalled["message"]

    as_json = json.loads(cadml(backend, reconciled, "-o", "json").stdout)
    assert [f["tenant"] for f in as_json["failed"]] == [GLOBEX]
    assert {"kind": "ModelVersion", "name": "drawing-dedup-1-0-0"} in \
        as_json["failed"][0]["wouldDelete"]

    pruned = cadml(backend, reconciled, "--prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert ("delete", "Model", "drawing-dedup") in audit_rows(backend.store, GLOBEX)
    with backend.admin.connect() as c:
        live = c.execute(text("SELECT count(*) FROM model_catalog WHERE tenant_id = "
                              "'globex-cad' AND NOT deleted")).scalar()
    assert live == 0


def test_deleting_most_of_a_tenant_needs_prune(backend: Backend, reconciled: Path) -> None:
    git(reconciled, "rm", "-q", PART)  # 6 of 11 objects
    git(reconciled, "commit", "-qm", "part-similarity retired")
    refused = cadml(backend, reconciled)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "deletes 6 of its 11 live objects" in refused.stdout
    assert "would delete Model acme-cad/part-similarity" in refused.stdout
    assert deleted_rows(backend) == 0
    assert cadml(backend, reconciled, "--prune").returncode == 0
    assert deleted_rows(backend) == 6


def test_deleting_less_than_half_needs_no_prune(backend: Backend, reconciled: Path) -> None:
    git(reconciled, "rm", "-q", "tenants/globex-cad/fastener-lookup.yaml")  # 3 of 7 objects
    git(reconciled, "commit", "-qm", "fastener-lookup retired")
    proc = cadml(backend, reconciled)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert deleted_rows(backend) == 3


# ---------------------------------------------------------------- failure is contained

def test_one_tenants_conflict_does_not_stop_another_tenants_rollback(
        backend: Backend, reconciled: Path) -> None:
    refuse_version(backend, "9.9.9")
    (reconciled / PART).write_text((reconciled / PART).read_text() + NEW_DRAFT)
    edit(reconciled, DEDUP, DEDUP_CANARY, DEDUP_ROLLBACK, "acme drafts 9.9.9, globex rolls back")
    acme_before = audit_rows(backend.store, ACME)

    proc = cadml(backend, reconciled)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "acme-cad: FAILED (Conflict)" in proc.stdout and "UNIQUE" in proc.stdout
    assert "acme-cad" in proc.stderr  # the summary line names the tenant
    # globex sorts after acme and still applied its rollback
    assert routes(backend.store, GLOBEX, "drawing-dedup") == (2, [("0.9.0", 100)])
    # acme rolled back as a whole, and its objects say why
    assert audit_rows(backend.store, ACME) == acme_before
    for kind, name in (("ModelVersion", "part-similarity-9-9-9"),
                       ("RolloutPolicy", "part-similarity"), ("Model", "assembly-match")):
        stalled = condition(backend.store, ACME, kind, name, "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "Conflict", (kind, name)
        assert "UNIQUE" in stalled["message"]
        assert condition(backend.store, ACME, kind, name, "Ready")["status"] == "False"

    as_json = json.loads(cadml(backend, reconciled, "-o", "json").stdout)
    assert [(f["tenant"], f["error"]["reason"]) for f in as_json["failed"]] == [
        (ACME, "Conflict")]
    assert "UNIQUE" in as_json["failed"][0]["error"]["message"]

    # the cause goes: the next pass applies acme and clears the Stalled condition
    stop_refusing(backend)
    healed = cadml(backend, reconciled)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert condition(backend.store, ACME, "RolloutPolicy", "part-similarity",
                     "Ready")["status"] == "True"
