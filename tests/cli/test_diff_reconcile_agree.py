"""`cadml diff` and `cadml reconcile` give the same verdict on the same commit (issue 10,
item 6): transition rules are checked against what the store applied, and routing comes
from one function (override > abort > validity window > weights > default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from tests.conftest import git
from tests.stores import Backend

PART = "tenants/acme-cad/part-similarity.yaml"
FASTENER = "tenants/globex-cad/fastener-lookup.yaml"
NOW = "2026-11-22T12:00:00Z"


def _commit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / rel
    body = path.read_text()
    assert old in body, old
    path.write_text(body.replace(old, new, 1))
    git(repo, "commit", "-qam", f"edit {rel}")


def _diff(repo: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["diff", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(repo), "--now",
                 NOW, "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


def _reconcile(backend: Backend, repo: Path, capsys: pytest.CaptureFixture[str]
               ) -> tuple[int, str]:
    code = main(["reconcile", "--repo", str(repo), "--store", backend.app_url])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_artifact_changed_on_a_served_version_is_refused_by_both(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _reconcile(backend, gitops_repo, capsys)[0] == 0
    _commit(gitops_repo, PART, "uri: s3://acme-models/part-sim/1.2.0/index.faiss",
            "uri: s3://acme-models/part-sim/1.2.0/index-rebuilt.faiss")
    code, report = _diff(gitops_repo, capsys)
    assert code == 1 and report["mustNotMerge"]
    assert "version.artifact-immutable" in {p["rule"] for p in report["problems"]}
    code, out = _reconcile(backend, gitops_repo, capsys)
    assert code == 1 and "version.artifact-immutable" in out, out
    with backend.store.transaction("acme-cad", "t") as tx:
        served = {v.version: v.artifact_uri for v in tx.versions("part-similarity")}
        snap = tx.snapshot("part-similarity")
        status = tx.statuses()[("ModelVersion", "part-similarity-1-2-0")]
    assert served["1.2.0"] == "s3://acme-models/part-sim/1.2.0/index.faiss"  # not applied
    assert snap is not None and snap.policy_version == 1
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "artifact" in stalled["message"]


def test_a_future_valid_from_routes_the_same_in_diff_and_in_the_store(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A PR adding a validFrom in the future: the store routes 100 % to STABLE until then,
    and the diff says so (it showed the weights, 90/10)."""
    _commit(gitops_repo, PART, "  refreshSeconds: 5\n",
            "  refreshSeconds: 5\n  validFrom: '2099-01-01T00:00:00Z'\n")
    code, report = _diff(gitops_repo, capsys)
    part = next(m for m in report["models"] if m["model"] == "part-similarity")
    assert code == 0, report
    assert (part["routingAfter"], part["routingSourceAfter"]) == ({"1.1.0": 100}, "expired")
    assert _reconcile(backend, gitops_repo, capsys)[0] == 0
    with backend.store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
    assert snap is not None and snap.source == "expired"
    assert {r.version: r.weight for r in snap.routes} == part["routingAfter"]


def test_removing_a_policy_keeps_the_model_routed_to_stable(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 4 through Git mode: the model's STABLE version keeps all traffic (source
    `default`), the diff and `cadml status` say so."""
    assert _reconcile(backend, gitops_repo, capsys)[0] == 0
    body = (gitops_repo / FASTENER).read_text()
    policy = body[body.index("---\napiVersion: cadml.io/v1alpha1\nkind: RolloutPolicy"):]
    policy = policy[:policy.index("\n---", 4) + 1] if "\n---" in policy[4:] else policy
    _commit(gitops_repo, FASTENER, policy, "")
    code, report = _diff(gitops_repo, capsys)
    fastener = next(m for m in report["models"] if m["model"] == "fastener-lookup")
    assert code == 0 and fastener["routingAfter"] == {"3.4.1": 100}
    assert fastener["routingSourceAfter"] == "default"
    assert _reconcile(backend, gitops_repo, capsys)[0] == 0
    with backend.store.transaction("globex-cad", "t") as tx:
        serving = tx.serving_snapshot("fastener-lookup")
    assert serving is not None and serving.source == "default"
    assert [(r.version, r.weight) for r in serving.routes] == [("3.4.1", 100)]
    assert main(["status", "--store", backend.app_url, "--tenant", "globex-cad"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if " Model " in ln and "fastener-lookup" in ln)
    assert "route=default" in line and "True" in line


def test_a_rename_cannot_carry_a_new_artifact_onto_a_served_version(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The store carries a renamed version on under its new name (same runs, routes), so
    the rename is judged by the rules of the object it continues: both refuse."""
    assert _reconcile(backend, gitops_repo, capsys)[0] == 0
    path = gitops_repo / PART
    path.write_text(path.read_text().replace("name: part-similarity-1-2-0",
                                             "name: part-sim-canary")
                    .replace("uri: s3://acme-models/part-sim/1.2.0/index.faiss",
                             "uri: s3://acme-models/part-sim/1.2.0/other.faiss"))
    git(gitops_repo, "commit", "-qam", "rename and swap the artifact")
    code, report = _diff(gitops_repo, capsys)
    assert code == 1 and "version.artifact-immutable" in {p["rule"] for p in report["problems"]}
    code, out = _reconcile(backend, gitops_repo, capsys)
    assert code == 1 and "version.artifact-immutable" in out
    with backend.store.transaction("acme-cad", "t") as tx:
        served = {v.version: (v.name, v.artifact_uri) for v in tx.versions("part-similarity")}
    assert served["1.2.0"] == ("part-similarity-1-2-0",
                               "s3://acme-models/part-sim/1.2.0/index.faiss")
