"""`cadml diff`: the meaning of a pull request, on a real Git repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from tests.conftest import git


def _edit(repo: Path, rel: str, old: str, new: str, count: int = 1) -> None:
    path = repo / rel
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _diff(repo: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["diff", "--base", "HEAD", "--repo", str(repo), "--now",
                 "2026-11-22T12:00:00Z", *extra])
    return code, capsys.readouterr().out


def test_no_change(gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _diff(gitops_repo, capsys)
    assert code == 0 and "No change" in out


def test_moving_canary_weight_shows_routing_before_after(
    gitops_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = "tenants/acme-cad/part-similarity.yaml"
    _edit(gitops_repo, rel, "weight: 90", "weight: 75")
    _edit(gitops_repo, rel, "weight: 10", "weight: 25")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0, out
    assert "Safe to merge" in out
    assert "### acme-cad / part-similarity (changed)" in out
    assert "| 1.2.0 | 10% | 25% | ⬆ gains |" in out
    assert "| 1.1.0 | 90% | 75% | ⬇ loses |" in out


def test_threshold_change_names_the_source(gitops_repo: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/assembly-match.yaml", "similarity: 0.78",
          "similarity: 0.8")
    code, out = _diff(gitops_repo, capsys, "-o", "json")
    data = json.loads(out)
    (model,) = [m for m in data["models"] if m["model"] == "assembly-match"]
    assert {"version": "2.0.0", "name": "similarity", "before": {"value": 0.78,
            "source": "model"}, "after": {"value": 0.8, "source": "model"}} in model["thresholds"]
    # part-similarity's policy overrides the model default: unchanged there
    assert code == 0


def test_rollback_commit_routes_everything_to_stable(gitops_repo: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml",
          "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n",
          "    - version: 1.1.0\n      weight: 100\n")
    code, out = _diff(gitops_repo, capsys, "-o", "json")
    (model,) = [m for m in json.loads(out)["models"] if m["model"] == "part-similarity"]
    assert model["routingAfter"] == {"1.1.0": 100} and model["losing"] == ["1.2.0"]
    assert code == 0


def test_editing_a_release_record_must_not_merge(gitops_repo: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml", "canaryPercent: 10",
          "canaryPercent: 50")
    code, out = _diff(gitops_repo, capsys)
    assert code == 1
    assert "must not merge" in out and "release.immutable" in out


def test_deleting_a_release_record_must_not_merge(gitops_repo: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rel = gitops_repo / "tenants/acme-cad/part-similarity.yaml"
    docs = rel.read_text().split("---\n")
    rel.write_text("---\n".join(d for d in docs if "rel_2026_06_11_004" not in d
                                or "rollbackTarget" in d))
    code, out = _diff(gitops_repo, capsys)
    assert code == 1 and "append-only" in out


def test_weakening_review_must_not_merge(gitops_repo: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml", "controlAllowed: false",
          "controlAllowed: true")
    code, out = _diff(gitops_repo, capsys)
    assert code == 1
    assert "human review weakened" in out and "model.review-control-allowed" in out


def test_illegal_stage_move_must_not_merge(gitops_repo: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml",
          "  version: 1.3.0-rc.1\n  stage: DRAFT", "  version: 1.3.0-rc.1\n  stage: STABLE")
    code, out = _diff(gitops_repo, capsys)
    assert code == 1 and "version.stage-transition" in out and "version.one-stable" in out


def test_promotion_in_one_commit_is_safe(gitops_repo: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rel = "tenants/acme-cad/part-similarity.yaml"
    _edit(gitops_repo, rel, "  version: 1.1.0\n  stage: STABLE",
          "  version: 1.1.0\n  stage: DEPRECATED")
    _edit(gitops_repo, rel, "  version: 1.2.0\n  stage: CANARY",
          "  version: 1.2.0\n  stage: STABLE")
    _edit(gitops_repo, rel,
          "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n",
          "    - version: 1.2.0\n      weight: 100\n")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0, out
    assert "1.1.0 STABLE → DEPRECATED" in out and "1.2.0 CANARY → STABLE" in out


def test_diff_between_two_refs(gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = git(gitops_repo, "rev-parse", "HEAD")
    _edit(gitops_repo, "tenants/globex-cad/fastener-lookup.yaml", "replicas: 1", "replicas: 2")
    git(gitops_repo, "commit", "-qam", "scale")
    code = main(["diff", "--base", base, "--head", "HEAD", "--repo", str(gitops_repo)])
    assert code == 0
    assert "No change to routing" in capsys.readouterr().out


def test_search_depth_change_is_shown_as_serving_change(gitops_repo: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    _edit(gitops_repo, "tenants/acme-cad/assembly-match.yaml", "efSearch: 128", "efSearch: 256")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0, out
    assert "### acme-cad / assembly-match (changed)" in out
    assert "Served differently: 2.1.0: search.efSearch 128 → 256" in out
    code, out = _diff(gitops_repo, capsys, "-o", "json")
    (model,) = [m for m in json.loads(out)["models"] if m["model"] == "assembly-match"]
    assert model["servingChanges"] == [{"version": "2.1.0",
                                        "change": "search.efSearch 128 → 256"}]


def test_an_edited_release_record_lists_each_changed_field(
        gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml", "canaryPercent: 10",
          "canaryPercent: 50")
    code, out = _diff(gitops_repo, capsys)
    (blocker,) = [ln for ln in out.splitlines() if "ReleaseRecord" in ln and "was edited" in ln]
    assert code == 1 and blocker.endswith("was edited: spec.canaryPercent: 10 → 50"), blocker


def test_adding_canary_steps_says_the_canary_restarts_at_the_first_step(
        gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a PR adding steps to a running 90/10 policy read 'No change to routing',
    although the controller restarts the canary at its first setWeight (issue 16)."""
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml", "  refreshSeconds: 5\n",
          "  refreshSeconds: 5\n  strategy:\n    steps:\n      - setWeight: 2\n"
          "      - pause: {}\n")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0, out
    assert "### acme-cad / part-similarity (changed)" in out
    assert ("Canary steps: a new plan of 2 steps; the walk starts again at step 1 and "
            "waits at step 2 (pause) with the canary at 2%; 10% after the last step") in out
    code, out = _diff(gitops_repo, capsys, "-o", "json")
    (model,) = [m for m in json.loads(out)["models"] if m["model"] == "part-similarity"]
    assert model["stepsChange"].startswith("a new plan of 2 steps")
    # committed, an edit outside the plan says nothing about the steps
    git(gitops_repo, "commit", "-qam", "steps")
    _edit(gitops_repo, "tenants/acme-cad/part-similarity.yaml", "refreshSeconds: 5",
          "refreshSeconds: 7")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0 and "Canary steps" not in out


def test_a_shadow_added_changed_or_removed_is_said(
        gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a PR adding `spec.shadow` read 'No change' (mirroring moves no traffic, but
    it puts a version's searches beside every mirrored request); issue 16."""
    path = "tenants/acme-cad/part-similarity.yaml"
    _edit(gitops_repo, path, "  refreshSeconds: 5\n",
          "  refreshSeconds: 5\n  shadow: {version: 1.2.0, percent: 20}\n")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0, out
    assert ("Shadow: shadow added: mirrors 1.2.0 at 20% of requests (compared, never "
            "served)") in out
    git(gitops_repo, "commit", "-qam", "shadow")
    _edit(gitops_repo, path, "version: 1.2.0, percent: 20", "version: 1.0.0, percent: 50")
    code, out = _diff(gitops_repo, capsys, "-o", "json")
    (model,) = [m for m in json.loads(out)["models"] if m["model"] == "part-similarity"]
    assert model["shadowChange"] == (
        "shadow changed: 1.2.0 at 20% → 1.0.0 at 50% of requests; not mirrored: 1.0.0 is "
        "DEPRECATED; a shadow is a CANARY, or a DRAFT with an artifact sha256")
    _edit(gitops_repo, path, "  shadow: {version: 1.0.0, percent: 50}\n", "")
    code, out = _diff(gitops_repo, capsys)
    assert code == 0 and "Shadow: shadow removed: 1.2.0 at 20% is no longer mirrored" in out
