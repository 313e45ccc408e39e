"""`cadml rollback --repo`: one validated commit, comments kept, history appended."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli import main
from controller.errors import UsageError
from controller.rollback import cluster_patch, rollback_in_repo
from tests.conftest import git

PART = "tenants/acme-cad/part-similarity.yaml"


def test_rollback_to_current_stable_keeps_comments(gitops_repo: Path) -> None:
    before = (gitops_repo / PART).read_text()
    result = rollback_in_repo(str(gitops_repo), "acme-cad", "part-similarity", None,
                              "INC-7: canary misroutes flanges", "ann")
    assert result.target == "1.1.0" and result.files == [PART]
    after = (gitops_repo / PART).read_text()
    assert "# One canary: 1.2.0 takes 10 %, the STABLE 1.1.0 the rest." in after
    assert before.count("\n") - after.count("\n") in range(0, 6)  # a small, local edit
    assert git(gitops_repo, "status", "--porcelain") == ""
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(gitops_repo)]) == 0
    assert main(["diff", "--base", "HEAD~1", "--head", "HEAD", "--repo",
                 str(gitops_repo)]) == 0


def test_rollback_reinstating_an_earlier_stable_moves_both_stages(gitops_repo: Path,
                                                                  capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    result = rollback_in_repo(str(gitops_repo), "acme-cad", "part-similarity", "1.0.0",
                              "1.1.0 regressed recall", "ann")
    assert "part-similarity-1-1-0: STABLE → DEPRECATED" in result.changes
    assert "part-similarity-1-0-0: DEPRECATED → STABLE" in result.changes
    assert main(["diff", "--base", "HEAD~1", "--head", "HEAD", "--repo",
                 str(gitops_repo)]) == 0
    out = capsys.readouterr().out
    assert "1.0.0 DEPRECATED → STABLE" in out and "1.1.0 STABLE → DEPRECATED" in out


@pytest.mark.parametrize(("to", "reason", "match"), [
    ("1.3.0-rc.1", "x", "DRAFT"),
    ("9.9.9", "x", "no version 9.9.9"),
    (None, "  ", "--reason is required"),
])
def test_rollback_refuses(gitops_repo: Path, to: str | None, reason: str, match: str) -> None:
    head = git(gitops_repo, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match=match):
        rollback_in_repo(str(gitops_repo), "acme-cad", "part-similarity", to, reason, "ann")
    assert git(gitops_repo, "rev-parse", "HEAD") == head
    assert git(gitops_repo, "status", "--porcelain") == ""


def test_rollback_refuses_to_commit_someone_elses_edits(gitops_repo: Path) -> None:
    (gitops_repo / PART).write_text((gitops_repo / PART).read_text() + "\n# local edit\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        rollback_in_repo(str(gitops_repo), "acme-cad", "part-similarity", None, "x", "ann")


def test_cluster_patch_forces_stable_and_says_git_must_follow() -> None:
    patch = cluster_patch("1.1.0", "INC-9", "ann", datetime(2026, 11, 22, tzinfo=UTC))
    assert patch["spec"]["override"]["version"] == "1.1.0"
    assert "INC-9" in patch["spec"]["override"]["reason"]
    assert patch["metadata"]["annotations"]["cadml.io/git-must-follow"] == "true"
