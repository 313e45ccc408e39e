"""A policy with both `spec.analysis` and canary steps (issue 16): allowed. The
policy-wide analysis is a background guard over the whole walk (it measures the canary at
whatever weight the steps give it, also after the last step); the steps' analyses gate
the moves. An abort by the guard routes everything to STABLE whatever the step, holds the
walk where it stands, says so in ReadyToPromote, and refuses `cadml promote`.

Embedded default (Git mode, a local worker, SQLite and PostgreSQL), as
tests/governance/test_steps_loop.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.search.build import BuildResult
from tests.conftest import git
from tests.governance.test_steps_loop import MODEL, STEPS, TENANT, Loop, _cond, _tree
from tests.stores import Backend

GUARDED = """  analysis: {metrics: [{name: success_rate, min: 0.9}], minSampleSize: 10,
             failureLimit: 1, intervalSeconds: 5}
  strategy: {steps: [{setWeight: 10}, {setWeight: 30}]}
"""


def test_the_policy_wide_analysis_guards_a_finished_walk_and_blocks_promotion(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = Loop(tmp_path, corpus_index, 0.9999, backend)  # a canary whose runs fail
    (loop.repo / "models" / f"{MODEL}.yaml").write_text(
        _tree(loop.stable, loop.canary, 0.9999).replace(STEPS, GUARDED))
    git(loop.repo, "commit", "-qam", "a guard over the steps")
    loop.reconcile()
    status = loop.status()
    assert (status["stepPhase"], status["canaryWeight"]) == ("ReadyToPromote", 30)
    assert loop.routes() == [("1.0.0", 70), ("1.1.0", 30)]
    assert loop.traffic("thirty", 300).count("1.1.0") >= 10

    code, (tick,) = loop.cli(capsys, "schedule-tick", "--window-key", "w-1",
                             "--store", loop.url)
    assert code == 0
    (guard,) = tick["analysis"]
    assert (guard["version"], guard["verdict"], guard["aborted"]) == ("1.1.0", "Fail", True)
    assert loop.routes() == [("1.0.0", 100)]
    loop.reconcile()
    status = loop.status()
    # the walk stays where it is; what is in force and why is in the conditions
    assert (status["stepPhase"], status["canaryWeight"]) == ("ReadyToPromote", 0)
    ready = _cond(status, "ReadyToPromote")
    assert (ready["status"], ready["reason"]) == ("False", "CanaryAborted")
    assert "spec.analysis" in ready["message"] and "success_rate" in ready["message"]
    assert _cond(status, "RolloutHealthy")["reason"] == "CanaryAborted"

    capsys.readouterr()
    code = main(["promote", f"{TENANT}/{MODEL}", "--version", "1.1.0", "--reason",
                 "steps done", "--repo", str(loop.repo), "--author",
                 "Alice <alice@acme.example>", "--store", loop.url])
    err = capsys.readouterr().err
    assert code == 2 and "the policy-wide analysis (spec.analysis) aborted canary 1.1.0" \
        in err, err
    assert git(loop.repo, "status", "--porcelain") == ""
