"""`cadml validate`: exit codes, output formats, stdin and Git refs, as a user runs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main
from tests.conftest import EXAMPLES, INVALID, git


def test_examples_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES)]) == 0
    assert capsys.readouterr().out.startswith("valid: ")


def test_invalid_exits_1_and_names_file_line_object_path_rule(
    capsys: pytest.CaptureFixture[str]
) -> None:
    case = INVALID / "policy-weights-sum.yaml"
    assert main(["validate", str(case)]) == 1
    out = capsys.readouterr().out
    assert (f"{case}:" in out and "RolloutPolicy initech-cad/widget-search" in out
            and "spec.weights" in out and "[policy.weights-sum-100]" in out)


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-o", "json", str(INVALID / "version-two-stable.yaml")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and data["errors"] == 2
    finding = data["findings"][0]
    assert finding["rule"] == "version.one-stable"
    assert finding["obj"]["kind"] == "ModelVersion" and finding["line"] > 1


def test_github_annotations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-o", "github", str(INVALID / "model-review-control.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("::error file=")
    assert ",line=" in out[0] and "title=model.review-control-allowed::" in out[0]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = (EXAMPLES / "tenants/globex-cad/fastener-lookup.yaml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["validate", "-"]) == 0


def test_missing_path_is_usage_error_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/no/such/dir"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_bad_flag_is_usage_error_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--output", "xml"])
    assert exc.value.code == 2


def test_expired_policy_is_a_warning_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = (EXAMPLES / "tenants/globex-cad/fastener-lookup.yaml").read_text()
    expired = '  refreshSeconds: 30\n  validUntil: "2026-01-01T00:00:00Z"'
    (tmp_path / "f.yaml").write_text(src.replace("  refreshSeconds: 30", expired))
    assert main(["validate", str(tmp_path)]) == 0
    assert "policy.expired" in capsys.readouterr().out
    assert main(["validate", "--warnings-as-errors", str(tmp_path)]) == 1


def test_git_ref_reads_the_tree_without_checkout(
    gitops_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = git(gitops_repo, "rev-parse", "HEAD")
    policy = gitops_repo / "tenants/acme-cad/part-similarity.yaml"
    policy.write_text(policy.read_text().replace("weight: 10\n", "weight: 20\n"))
    git(gitops_repo, "commit", "-qam", "break weights")
    # The working tree is broken at HEAD; the older commit is still valid.
    assert main(["validate", "--git-ref", first, "--repo", str(gitops_repo)]) == 0
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(gitops_repo)]) == 1
    out = capsys.readouterr().out
    assert "HEAD:tenants/acme-cad/part-similarity.yaml" in out
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(gitops_repo),
                 "tenants/globex-cad"]) == 0


def test_git_ref_errors_are_exit_2(gitops_repo: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--git-ref", "nope", "--repo", str(gitops_repo)]) == 2
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(tmp_path / "x")]) == 2


def test_console_script_runs_as_a_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "controller", "validate", str(EXAMPLES)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
