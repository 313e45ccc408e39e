"""Analysis bounds `shadow_overlap_at_10` like any metric; its minSampleSize counts shadow
runs. A version shadowed before it takes traffic is judged by its comparison alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controller.api.v1alpha1 import AnalysisSpec
from controller.cli import main
from controller.evaluation import Metrics, analyse, shadow_only, with_shadow
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.records import ShadowRoute
from controller.search.build import BuildResult
from controller.worker.app import MIRROR, make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import git
from tests.gitops_trees import commit_tree
from tests.shadow.test_shadow_steps import shadowed_tree
from tests.shadow.test_worker_mirror import DRAWINGS, _applied, _search_all
from tests.stores import Backend
from tests.waiting import until
from tests.worker.conftest import MODEL, TENANT

SPEC = AnalysisSpec.model_validate({"metrics": [{"name": "shadow_overlap_at_10", "min": 0.7},
                                                {"name": "success_rate", "min": 0.9}],
                                    "minSampleSize": 200})
RUNS = Metrics(1.0, None, 5.0, 1000, 0)


@pytest.mark.parametrize(("overlaps", "verdict"), [
    ([0.9] * 200, "Pass"),
    ([0.9] * 100 + [0.4] * 100, "Fail"),  # mean 0.65
    ([0.9] * 100 + [None] * 100, "Fail"),  # a failed shadow search counts 0: mean 0.45
    ([0.2] * 199, "InsufficientData"),  # 1000 runs, but 199 shadowed queries
    ([], "InsufficientData"),
])
def test_overlap_bound_counts_shadow_runs(overlaps: list[float | None], verdict: str) -> None:
    overall, verdicts = analyse(shadow_only(SPEC), with_shadow(RUNS, overlaps))
    assert overall == verdict
    assert [v.metric for v in verdicts] == ["shadow_overlap_at_10"]
    assert verdicts[0].sample_size == len(overlaps)


def test_a_version_with_traffic_is_judged_by_every_bound() -> None:
    overall, verdicts = analyse(SPEC, with_shadow(RUNS, [0.9] * 200))
    assert overall == "Pass" and [v.metric for v in verdicts] == [
        "shadow_overlap_at_10", "success_rate"]


ANALYSIS = """  analysis:
    metrics:
      - {name: shadow_overlap_at_10, min: 0.7}
    minSampleSize: 10
    failureLimit: 1
    windowSeconds: 3600
"""


@pytest.mark.parametrize("shadow_index", ["corpus_v3", "corpus_v3_half"])
async def test_overlap_bound_judges_a_shadowed_draft(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, shadow_index: str,
        aiohttp_client: Any, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same bound passes the full v3 index of the corpus (overlap ~0.97) and fails one
    that lost half the drawings; the failed analysis aborts the experiment, which
    withdraws the shadow (no traffic ever moved)."""
    tree = shadowed_tree(tmp_path, corpus_index, request.getfixturevalue(shadow_index),
                         "DRAFT", [("1.0.0", 100)],
                         "  shadow: {version: 2.0.0, percent: 100}\n" + ANALYSIS)
    repo = commit_tree(tmp_path, MODEL, tree)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-analysis"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1)))
    await _applied(client, 1)
    await _search_all(client, "analysis")
    await asyncio.wait_for(client.app[MIRROR].idle.wait(), 30)

    async def recorded() -> Any:
        return (await (await client.get("/readyz")).json())["shadow"]["recorded"] \
            == len(DRAWINGS)
    await until(recorded, 20.0)

    capsys.readouterr()
    assert main(["schedule-tick", "--window-key", "w-1", "--store", backend.app_url,
                 "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    (measured,) = tick["analysis"]
    assert measured["version"] == "2.0.0"
    assert "shadow_overlap_at_10" in measured["summary"]
    assert f"n={len(DRAWINGS)}" in measured["summary"]
    with backend.store.read(TENANT, "test") as tx:
        snap = tx.serving_snapshot(MODEL)
    assert snap is not None
    if shadow_index == "corpus_v3":
        assert (measured["verdict"], measured["aborted"]) == ("Pass", False)
        assert snap.shadow is not None and snap.source == "policy"
    else:
        assert (measured["verdict"], measured["aborted"]) == ("Fail", True)
        assert snap.shadow is None and snap.source == "analysis-abort"
        assert [(r.version, r.weight) for r in snap.routes] == [("1.0.0", 100)]
        # a sync of the same spec, and a changed shadow, keep the abort (the shadow is no
        # part of the plan); a new plan (here: the analysis changed) starts afresh
        assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
        with backend.store.read(TENANT, "test") as tx:
            assert tx.serving_snapshot(MODEL).source == "analysis-abort"  # type: ignore[union-attr]
        tree = tree.replace("percent: 100", "percent: 50")
        for edit, source in (("shadow 2.0.0 at 50 %", "analysis-abort"),
                             ("a new analysis", "policy")):
            if source == "policy":
                tree = tree.replace("windowSeconds: 3600", "windowSeconds: 7200")
            (repo / "models" / f"{MODEL}.yaml").write_text(tree)
            git(repo, "commit", "-qam", edit)
            assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
            with backend.store.read(TENANT, "test") as tx:
                again = tx.serving_snapshot(MODEL)
            assert again is not None and again.source == source, edit
        assert again.shadow == ShadowRoute("2.0.0", 50)


def test_changing_the_shadow_keeps_the_analysis_state() -> None:
    """The shadow is no part of the canary plan: its percent or version changes neither
    the analysis key nor the plan's (an abort is lifted only by a new plan); state keyed
    with the shadow (e237f7d and before) still judges the spec while it keeps it."""
    from controller.evaluation import _digest, analysis_key, judges
    from controller.steps import plan_key

    base = {"modelRef": "m", "weights": [{"version": "1.0.0", "weight": 100}],
            "analysis": {"metrics": [{"name": "shadow_overlap_at_10", "min": 0.7}]}}
    # a spec without a shadow keeps the key it had before shadows existed
    assert analysis_key(base) == _digest({"key": "analysis/2", "weights": base["weights"],
                                          "analysis": base["analysis"]})
    one = {**base, "shadow": {"version": "2.0.0", "percent": 10}}
    other = {**base, "shadow": {"version": "2.1.0", "percent": 50}}
    assert len({analysis_key(base), analysis_key(one), analysis_key(other)}) == 1
    assert len({plan_key(base), plan_key(one), plan_key(other)}) == 1
    legacy = _digest({"key": "analysis/2", "weights": base["weights"],
                      "analysis": base["analysis"], "shadow": one["shadow"]})
    assert judges(legacy, one, "whole-spec-hash")
    assert not judges(legacy, other, "whole-spec-hash")
    assert not judges(analysis_key(base), {**base, "analysis": {"metrics": []}}, "h")
