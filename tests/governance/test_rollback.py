"""`cadml rollback --repo`: one validated commit, comments kept, history appended."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli import main
from controller.errors import InvalidInput, UsageError
from controller.rollback import cluster_patch, promote_in_repo, rollback_in_repo
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


# ---------------------------------------------------------------- cadml promote

ASSEMBLY = "tenants/acme-cad/assembly-match.yaml"


def test_promote_moves_both_stages_and_the_traffic_in_one_commit(gitops_repo: Path) -> None:
    from controller.reconcile.gitmode import reconcile_repo
    from controller.store import Store
    from controller.store.engine import make_engine
    from controller.store.migrate import upgrade
    from tests.conftest import NOW

    assert main(["promote", "acme-cad/part-similarity", "--version", "1.2.0", "--reason",
                 "canary held its bounds for a week", "--repo", str(gitops_repo)]) == 0
    assert git(gitops_repo, "status", "--porcelain") == ""
    message = git(gitops_repo, "log", "-1", "--format=%B")
    assert message.startswith("promote acme-cad/part-similarity 1.2.0 to STABLE")
    assert "Reason: canary held its bounds for a week" in message
    assert "part-similarity-1-1-0: STABLE → DEPRECATED" in message
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(gitops_repo)]) == 0
    store = Store(make_engine(f"sqlite:///{gitops_repo.parent / 'p.db'}"))
    upgrade(store.engine)
    assert reconcile_repo(store, str(gitops_repo), "HEAD", [], 8 << 20, now=NOW).ok
    with store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
    assert snap is not None and snap.stable_version == "1.2.0"
    assert [(r.version, r.weight) for r in snap.routes] == [("1.2.0", 100)]


@pytest.mark.parametrize("store", ["missing.db", "empty.db"])
def test_promote_with_a_store_that_cannot_say_refuses_instead_of_warning(
        gitops_repo: Path, store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """part-similarity has a policy-wide analysis. A --store given but missing (a typo) or
    without the cadml schema cannot say whether the analysis aborted the canary: it was
    taken as "no store" (a warning) and the promotion committed with no check at all."""
    url = f"sqlite:///{gitops_repo.parent / store}"
    if store == "empty.db":
        (gitops_repo.parent / store).write_bytes(b"")
    head = git(gitops_repo, "rev-parse", "HEAD")
    code = main(["promote", "acme-cad/part-similarity", "--version", "1.2.0", "--reason",
                 "canary held", "--repo", str(gitops_repo), "--store", url])
    err = capsys.readouterr().err
    assert code == 2 and "store" in err, err
    assert git(gitops_repo, "rev-parse", "HEAD") == head

def test_promote_keeps_the_other_canaries_share(gitops_repo: Path) -> None:
    result = promote_in_repo(str(gitops_repo), "acme-cad", "assembly-match", "2.1.0",
                             "recall up", "ann")
    assert result.changes[0] == ("assembly-match: weights 2.0.0=80, 2.1.0=15, 2.2.0-beta=5 → "
                                 "2.1.0=95, 2.2.0-beta=5")
    assert result.files == [ASSEMBLY]


@pytest.mark.parametrize(("version", "match"), [
    ("1.1.0", "STABLE; only a CANARY"),
    ("1.3.0-rc.1", "DRAFT; only a CANARY"),
    ("9.9.9", "no version 9.9.9"),
])
def test_promote_refuses_what_is_not_a_canary(gitops_repo: Path, version: str,
                                              match: str) -> None:
    head = git(gitops_repo, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match=match):
        promote_in_repo(str(gitops_repo), "acme-cad", "part-similarity", version, "x", "ann")
    assert git(gitops_repo, "rev-parse", "HEAD") == head


def test_promote_past_a_failed_release_gate_commits_nothing(gitops_repo: Path) -> None:
    failing = (
        "---\napiVersion: cadml.io/v1alpha1\nkind: ReleaseRecord\nmetadata:\n"
        "  name: rel-part-sim-1-2-0\n  namespace: acme-cad\nspec:\n"
        "  releaseId: rel_2026_11_20_001\n  gitSha: 0a1b2c3\n"
        "  artifacts: {modelRef: part-similarity-1-2-0}\n  evalSetRef: golden_parts@sha1\n"
        "  evalReportUri: s3://acme-eval/rel_2026_11_20_001/report.html\n"
        "  approvers: [tl-ml]\n  canaryPercent: 10\n  changeSummary: recall regressed\n"
        "  riskLevel: low\n  evidence: {evalScore: 0.81, evalThreshold: 0.9}\n")
    (gitops_repo / PART).write_text((gitops_repo / PART).read_text() + failing)
    git(gitops_repo, "commit", "-qam", "release record of 1.2.0 (C2 fails)")
    head, before = git(gitops_repo, "rev-parse", "HEAD"), (gitops_repo / PART).read_text()
    with pytest.raises(InvalidInput) as exc:
        promote_in_repo(str(gitops_repo), "acme-cad", "part-similarity", "1.2.0", "x", "ann")
    assert "version.release-gates" in {e.rule for e in exc.value.errors}
    assert git(gitops_repo, "rev-parse", "HEAD") == head  # nothing committed
    assert (gitops_repo / PART).read_text() == before  # nothing left edited


def test_without_a_git_identity_only_author_commits(gitops_repo: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """No user.name/email anywhere: the commit is refused (nothing changed), unless
    --author names who makes it; never `root <root@host>`."""
    monkeypatch.setenv("HOME", str(gitops_repo.parent))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitops_repo.parent / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    head = git(gitops_repo, "rev-parse", "HEAD")
    argv = ["rollback", "acme-cad/part-similarity", "--reason", "p95 doubled", "--repo",
            str(gitops_repo)]
    assert main(argv) == 2
    assert "Git has no identity" in capsys.readouterr().err
    assert git(gitops_repo, "rev-parse", "HEAD") == head
    assert git(gitops_repo, "status", "--porcelain") == ""
    assert main([*argv, "--author", "Ann Ops <ann@example.com>"]) == 0
    assert git(gitops_repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Ann Ops <ann@example.com>|Ann Ops <ann@example.com>")
