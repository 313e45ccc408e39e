"""Canary safety where the steps meet the policy-wide analysis (the guard, `spec.analysis`),
review findings of issue 16 counted for issue 12.

An abort by the guard is lifted only by a new plan in Git (weights, steps or analysis);
the same predicate (`evaluation.judges`) says whether an abort is in force for the
planner, the tick and `cadml promote`; an edit of `spec.shadow` is not a new plan and
lifts nothing; `cadml rollout retry|resume` refuse under it and say what lifts it; a pass
that changes nothing writes nothing.

Embedded default (Git mode, a local worker, SQLite and PostgreSQL), through the CLI, as
tests/governance/test_steps_loop.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from controller.cli import main
from controller.governance import schedule_tick
from controller.search.build import BuildResult
from controller.stepping import command_store
from controller.steps import Command
from controller.store import tables as t
from tests.conftest import git
from tests.gitops_trees import canary_tree, version_doc
from tests.governance.test_steps_loop import MODEL, TENANT, Loop, _cond
from tests.stores import Backend
from tests.waiting import until_sync

GUARD = """  analysis: {metrics: [{name: success_rate, min: 0.9}], minSampleSize: 10,
             failureLimit: 1, intervalSeconds: 5}
"""
DONE = GUARD + "  strategy: {steps: [{setWeight: 10}, {setWeight: 30}]}\n"
PAUSED = GUARD + "  strategy: {steps: [{setWeight: 10}, {pause: {}}]}\n"
# the step's own analysis passes whatever the runs' outcome; the guard fails them
STEP_PASSES = GUARD + """  strategy: {steps: [{setWeight: 10}, {analysis: {metrics: [
      {name: p95_latency_ms, max: 1000000}], minSampleSize: 5, intervalSeconds: 5}},
      {setWeight: 30}]}
"""
SHADOW = "  shadow: {version: 1.1.0, percent: 5}\n"
DRAFT_SHADOW = "  shadow: {version: 1.2.0, percent: 5}\n"


def _guarded(tmp_path: Path, index: BuildResult, backend: Backend, extra: str) -> Loop:
    """A failing canary under `extra`, with enough of its runs for the guard to judge."""
    loop = Loop(tmp_path, index, 0.9999, backend)
    _commit(loop, extra, "a guard over the steps")
    loop.reconcile()
    assert loop.traffic("canary", 300).count("1.1.0") >= 10
    return loop


def _commit(loop: Loop, extra: str, message: str, draft: bool = False) -> None:
    """The tree with the policy's `extra` lines; `draft`: and a DRAFT 1.2.0 to shadow."""
    more = "---\n" + version_doc(TENANT, MODEL, f"{MODEL}-1-2-0", "1.2.0", "DRAFT",
                                 loop.canary) if draft else ""
    (loop.repo / "models" / f"{MODEL}.yaml").write_text(
        canary_tree(TENANT, MODEL, loop.stable, loop.canary, 0.9999, 5, extra) + more)
    git(loop.repo, "commit", "-qam", message)


def _guard_aborts(loop: Loop, capsys: pytest.CaptureFixture[str], key: str = "w-1") -> None:
    code, (tick,) = loop.cli(capsys, "schedule-tick", "--window-key", key, "--store", loop.url)
    assert code == 0
    (guard,) = tick["analysis"]
    assert (guard["version"], guard["aborted"]) == ("1.1.0", True)
    assert loop.routes() == [("1.0.0", 100)]


def _promote(loop: Loop, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["promote", f"{TENANT}/{MODEL}", "--version", "1.1.0", "--reason",
                 "steps done", "--repo", str(loop.repo), "--author",
                 "Alice <alice@acme.example>", "--store", loop.url])
    return code, capsys.readouterr().err


def test_promote_refuses_a_guard_abort_after_a_shadow_edit_in_git(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 1: promote matched the guard's aborts by key equality on the Git spec; a
    shadow edit (not what success_rate judges) hid the abort and promote committed."""
    loop = _guarded(tmp_path, corpus_index, backend, DONE)
    assert loop.status()["stepPhase"] == "ReadyToPromote"
    _guard_aborts(loop, capsys)
    _commit(loop, DONE + DRAFT_SHADOW, "shadow 5 % of requests to a draft", draft=True)
    head = git(loop.repo, "rev-parse", "HEAD")
    code, err = _promote(loop, capsys)  # the edit is not reconciled yet
    assert code == 2 and "the policy-wide analysis (spec.analysis) aborted canary 1.1.0" \
        in err, err
    loop.reconcile()
    code, err = _promote(loop, capsys)  # nor once it is
    assert code == 2 and "aborted canary 1.1.0" in err, err
    assert git(loop.repo, "rev-parse", "HEAD") == head
    assert git(loop.repo, "status", "--porcelain") == ""


def test_a_shadow_edit_does_not_lift_a_guard_abort(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 2: the shadow was part of the guard's key but not of the plan's, so a shadow
    percent edit lifted the abort and the canary walked on at its step's weight."""
    loop = _guarded(tmp_path, corpus_index, backend, PAUSED + SHADOW)
    assert (loop.status()["stepPhase"], loop.routes()) == (
        "Paused", [("1.0.0", 90), ("1.1.0", 10)])
    _guard_aborts(loop, capsys)
    _commit(loop, PAUSED + SHADOW.replace("percent: 5", "percent: 20"), "shadow 20 %")
    loop.reconcile()
    assert loop.routes() == [("1.0.0", 100)]
    status = loop.status()
    assert (status["stepPhase"], status["canaryWeight"]) == ("Paused", 0)
    assert _cond(status, "ReadyToPromote")["reason"] == "CanaryAborted"
    _commit(loop, PAUSED, "no shadow")
    loop.reconcile()
    assert loop.routes() == [("1.0.0", 100)]
    # new steps restart the walk, held at step 1: the guard judged these weights
    _commit(loop, PAUSED.replace("setWeight: 10", "setWeight: 20"), "first step at 20 %")
    loop.reconcile()
    assert loop.routes() == [("1.0.0", 100)]
    assert (loop.status()["currentStepIndex"], loop.status()["stepPhase"]) == (
        0, "Progressing")
    # a new analysis (or new weights) lifts it: the walk starts again at step 0
    _commit(loop, PAUSED.replace("minSampleSize: 10", "minSampleSize: 11"), "a new guard")
    loop.reconcile()
    assert loop.routes() == [("1.0.0", 90), ("1.1.0", 10)]


def _row_times(loop: Loop) -> tuple[Any, Any, int]:
    """When the step row and the policy's status row were last written, and how many audit
    rows the tenant has: a pass that changes nothing moves none of them."""
    with loop.store.read(TENANT, "t") as tx:
        step = tx.conn.execute(select(t.rollout_step.c.updated_at)).scalar_one()
        status = tx.conn.execute(select(t.object_status.c.updated_at).where(
            t.object_status.c.kind == "RolloutPolicy")).scalar_one()
        return step, status, len(list(tx.audit_events()))


def test_a_held_walk_writes_nothing_on_a_pass_that_changes_nothing(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 3: under a hold every pass rewrote the step row (stepStartedAt) and the
    status, with nothing changed."""
    loop = _guarded(tmp_path, corpus_index, backend, PAUSED)
    _guard_aborts(loop, capsys)
    loop.reconcile()  # the pass that sees the hold first may record it
    before = _row_times(loop)
    started = loop.status()["stepStartedAt"]
    for _ in range(2):
        loop.reconcile()
    assert _row_times(loop) == before
    # a tick evaluates the versions anew (the next pass's status shows that), but the
    # held walk it looks at is not written
    for key in ("w-2", "w-3"):
        code, _ = loop.cli(capsys, "schedule-tick", "--window-key", key, "--store", loop.url)
        assert code == 0
    assert _row_times(loop)[0] == before[0]
    loop.reconcile()
    assert loop.status()["stepStartedAt"] == started


def test_retry_and_resume_refuse_under_a_guard_abort_and_say_what_lifts_it(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 4: `rollout retry` said only "not aborted" (the guard's abort unnamed), and
    `rollout resume` passed the pause while the guard held the canary at 0 %."""
    loop = _guarded(tmp_path, corpus_index, backend, PAUSED)
    _guard_aborts(loop, capsys)
    loop.reconcile()
    before = _row_times(loop)
    for action in ("retry", "resume"):
        capsys.readouterr()
        code = main(["rollout", action, f"{TENANT}/{MODEL}", "--store", loop.url,
                     "--actor", "bob"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "the policy-wide analysis (spec.analysis) aborted canary 1.1.0" in err, err
        assert "spec.weights or spec.analysis" in err, err  # what lifts it
    assert _row_times(loop) == before
    assert loop.status()["stepPhase"] == "Paused" and loop.routes() == [("1.0.0", 100)]
    # an abort of the steps themselves still applies (it only holds the canary more)
    code, out = loop.cli(capsys, "rollout", "abort", f"{TENANT}/{MODEL}", "--store",
                         loop.url, "--actor", "bob")
    assert code == 0 and out["phase"] == "Aborted"


def test_the_tick_holds_the_walk_under_a_guard_abort(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend) -> None:
    """Store level (`governance.schedule_tick` over the real store): the tick that records
    the guard's abort judges no step with the aborted canary's runs, as the planner holds
    the walk (fixed in e237f7d; failed on e237f7d^: the step passed and the walk moved)."""
    loop = _guarded(tmp_path, corpus_index, backend, STEP_PASSES)
    with loop.store.read(TENANT, "t") as tx:
        before = tx.observe().steps[MODEL]
    assert (before.index, before.phase) == (1, "Progressing")
    result = schedule_tick(loop.store, TENANT, "w-1", datetime.now(UTC) + timedelta(seconds=1))
    assert [(a.version, a.aborted_now) for a in result.analysed] == [("1.1.0", True)]
    assert not any(s.moved for s in result.stepped)
    with loop.store.read(TENANT, "t") as tx:
        after = tx.observe().steps[MODEL]
    assert (after.index, after.phase, after.verdicts) == (1, "Progressing", ())
    assert loop.routes() == [("1.0.0", 100)]


def test_a_model_renamed_mid_walk_keeps_its_place(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ordering: the Model is renamed in Git (same modelKey; its versions and policy
    re-created under new names with the new modelRef, which is immutable) while the walk
    waits at its pause: the walk is the model's, not its name's: it keeps its step and
    weight, and a resume under the new name passes the pause."""
    loop = Loop(tmp_path, corpus_index, 0.3, backend)
    loop.traffic("ten", 300)
    code, _ = loop.cli(capsys, "schedule-tick", "--window-key", "w-1", "--store", loop.url)
    assert code == 0 and loop.routes() == [("1.0.0", 50), ("1.1.0", 50)]
    loop.reconcile()
    before = loop.status()
    assert (before["currentStepIndex"], before["stepPhase"]) == (3, "Paused")
    doc = loop.repo / "models" / f"{MODEL}.yaml"
    doc.write_text(doc.read_text().replace(MODEL, f"{MODEL}-2").replace(
        f"modelKey: {MODEL}-2", f"modelKey: {MODEL}"))
    git(loop.repo, "commit", "-qam", "rename the model")
    loop.reconcile()

    def status() -> dict[str, Any]:
        with loop.store.read(TENANT, "t") as tx:
            return tx.statuses()[("RolloutPolicy", f"{MODEL}-2")]
    after = status()
    assert (after["currentStepIndex"], after["stepPhase"], after["stepStartedAt"],
            after["canaryWeight"]) == (3, "Paused", before["stepStartedAt"], 50)
    capsys.readouterr()
    code = main(["rollout", "resume", f"{TENANT}/{MODEL}-2", "--store", loop.url,
                 "--actor", "alice", "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (json.loads(out)["stepIndex"], json.loads(out)["phase"]) == (4, "ReadyToPromote")
    loop.reconcile()
    assert status()["stepPhase"] == "ReadyToPromote"
    with loop.store.read(TENANT, "t") as tx:
        snap = tx.snapshot(f"{MODEL}-2")
    assert snap is not None and [(r.version, r.weight) for r in snap.routes] == [
        ("1.0.0", 70), ("1.1.0", 30)]


def _blocked_on_a_lock(backend: Backend) -> bool:
    """Whether another session of the store waits on a row lock (PostgreSQL)."""
    with backend.store.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> pg_backend_pid()")).scalar_one())


def test_two_resumes_racing_apply_once_and_skip_no_step(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ordering: alice's resume is written but not committed when bob's `cadml rollout
    resume` of the same pause, and a schedule tick, read the walk (PostgreSQL: bob's write
    waits on alice's row lock; SQLite serialises them). Exactly one resume applies: the
    pause passes once, bob is refused with what happened (before: PostgreSQL said "a pass
    from the latest view decides", exit 1, as if it would apply later) and nothing of his
    is written; neither tick moves a step."""
    loop = Loop(tmp_path, corpus_index, 0.3, backend)
    loop.traffic("ten", 300)
    code, _ = loop.cli(capsys, "schedule-tick", "--window-key", "w-1", "--store", loop.url)
    assert code == 0
    loop.reconcile()
    assert (loop.status()["currentStepIndex"], loop.status()["stepPhase"]) == (3, "Paused")
    bob: dict[str, Any] = {}

    def resume_as_bob() -> None:
        bob["code"] = main(["rollout", "resume", f"{TENANT}/{MODEL}", "--store", loop.url,
                            "--actor", "bob"])
    capsys.readouterr()
    with loop.store.transaction(TENANT, "alice") as tx:
        command_store(tx, MODEL, Command("resume", "alice", "alice-1"), datetime.now(UTC))
        racers = [threading.Thread(target=resume_as_bob), threading.Thread(
            target=lambda: bob.update(tick=schedule_tick(loop.store, TENANT, "w-2",
                                                         datetime.now(UTC))))]
        for racer in racers:
            racer.start()
        if backend.kind == "postgresql":
            assert until_sync(lambda: _blocked_on_a_lock(backend), 30.0)
    for racer in racers:
        racer.join(60)
        assert not racer.is_alive()
    err = capsys.readouterr().err
    assert bob["tick"].ran and not any(s.moved for s in bob["tick"].stepped)
    assert bob["code"] == 2, err
    # PostgreSQL: his write found the walk moved; SQLite: he read it after alice
    assert "cannot resume" in err and ("nothing written" in err or "not paused" in err), err
    code, _ = loop.cli(capsys, "schedule-tick", "--window-key", "w-3", "--store", loop.url)
    assert code == 0
    loop.reconcile()
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"]) == (4, "ReadyToPromote")
    assert [v["result"] for v in status["stepVerdicts"]] == ["Pass", "Resumed"]
    assert status["stepVerdicts"][-1]["by"] == "alice"
    with loop.store.read(TENANT, "t") as tx:
        resumed = [e.actor for e in tx.audit_events() if e.action == "step"
                   and e.details.get("command") == "resume"]
    assert resumed == ["alice"]


def aborted_as_e237f7d_keyed_it(tmp_path: Path, corpus_index: BuildResult, backend: Backend,
                                capsys: pytest.CaptureFixture[str]) -> Loop:
    """A guarded policy with a shadow whose guard aborted the canary, its analysis state
    rewritten under the key e237f7d wrote (with the shadow), then reconciled: an upgrade."""
    loop = _guarded(tmp_path, corpus_index, backend, DONE)
    _commit(loop, DONE + DRAFT_SHADOW, "shadow 5 % of requests to a draft", draft=True)
    loop.reconcile()
    _guard_aborts(loop, capsys)
    with loop.store.transaction(TENANT, "test") as tx:
        (row,) = [p for p in tx.observe().policies.values() if not p.deleted]
        old = hashlib.sha256(json.dumps({"key": "analysis/2", "weights": row.spec["weights"],
                                         "analysis": row.spec["analysis"],
                                         "shadow": row.spec["shadow"]},
                                        sort_keys=True).encode()).hexdigest()
        assert tx.conn.execute(update(t.analysis_state).values(spec_hash=old)).rowcount == 1
    loop.reconcile()
    return loop


def test_an_abort_keyed_by_the_previous_release_still_holds_and_refuses_promote(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Upgrade: e237f7d keyed the guard's state with the shadow. Its abort, rewritten
    under that key here as e237f7d wrote it, still routes all to STABLE and still refuses
    `promote`: the planner and promote read it by the same predicate."""
    loop = aborted_as_e237f7d_keyed_it(tmp_path, corpus_index, backend, capsys)
    assert loop.routes() == [("1.0.0", 100)]
    assert _cond(loop.status(), "ReadyToPromote")["reason"] == "CanaryAborted"
    code, err = _promote(loop, capsys)
    assert code == 2 and "aborted canary 1.1.0" in err, err
