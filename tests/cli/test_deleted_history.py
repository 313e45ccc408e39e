"""`cadml status` and `cadml history --at` say what was deleted (issue 11): a tenant removed
from Git (with --prune) is shown deleted, not as in force; before its deletion, history
still shows the routing it had; a removed policy leaves the default route."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli import main
from tests.conftest import git
from tests.stores import Backend

FASTENER = "tenants/globex-cad/fastener-lookup.yaml"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _history(backend: Backend, capsys: pytest.CaptureFixture[str], at: datetime
             ) -> dict[str, dict[str, object]]:
    rows = _json(capsys, "history", "--at", at.isoformat(), "--store", backend.app_url,
                 "--tenant", "globex-cad", "-o", "json")
    return {r["model"]: r for r in rows}  # type: ignore[attr-defined, index]


def test_a_removed_tenant_is_shown_deleted(backend: Backend, gitops_repo: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", backend.app_url]) == 0
    capsys.readouterr()
    before = datetime.now(UTC)
    git(gitops_repo, "rm", "-rq", "tenants/globex-cad")
    git(gitops_repo, "commit", "-qm", "globex leaves")
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", backend.app_url,
                 "--prune"]) == 0
    capsys.readouterr()
    after = datetime.now(UTC)
    rows = _json(capsys, "status", "--store", backend.app_url, "--tenant", "globex-cad",
                 "-o", "json")
    kinds = {(r["kind"], r["deleted"]) for r in rows  # type: ignore[attr-defined]
             if r["kind"] != "ReleaseRecord"}  # type: ignore[index]
    assert kinds == {("Model", True), ("ModelVersion", True), ("RolloutPolicy", True)}
    assert main(["status", "--store", backend.app_url, "--tenant", "globex-cad"]) == 0
    text = capsys.readouterr().out
    assert "fastener-lookup" in text and "deleted (history kept)" in text
    then, now = _history(backend, capsys, before), _history(backend, capsys, after)
    assert then["drawing-dedup"]["source"] == "override"  # in force before the removal
    assert now["drawing-dedup"]["source"] == "deleted" and now["drawing-dedup"]["routing"] == {}
    assert now["fastener-lookup"]["stable"] is None


def test_a_removed_policy_leaves_the_default_route_in_history(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", backend.app_url]) == 0
    body = (gitops_repo / FASTENER).read_text()
    policy = body[body.index("---\napiVersion: cadml.io/v1alpha1\nkind: RolloutPolicy"):]
    (gitops_repo / FASTENER).write_text(body.replace(policy, ""))
    git(gitops_repo, "commit", "-qam", "no policy")
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", backend.app_url]) == 0
    capsys.readouterr()
    row = _history(backend, capsys, datetime.now(UTC))["fastener-lookup"]
    assert (row["source"], row["routing"]) == ("default", {"3.4.1": 100})
