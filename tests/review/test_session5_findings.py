"""Session 5 adversarial review findings (issues 11, 12, 15, 16), through the public
interfaces: `cadml reconcile` of a Git repository, the `cadml` CLI, shard files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from tests.cli.test_index_shards import cadml
from tests.conftest import DXF_CORPUS, ROOT, git
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.stores import Backend

TENANT, MODEL = "acme-cad", "part-sim"
PAUSE_STEPS = """  strategy:
    steps:
      - setWeight: 10
      - pause: {}
      - setWeight: 50
"""
POLICY_META = f"metadata: {{name: {MODEL}, namespace: {TENANT}}}"


def _steps_tree(tmp_path: Path, index: BuildResult, annotation: str | None) -> Path:
    """The plan 10 % → pause (no duration) → 50 % in a new Git repository; `annotation`:
    a rollout-command annotation on the RolloutPolicy, as committed by hand."""
    stable, canary = copy_artifacts(tmp_path, index, ["art-stable", "art-canary"])
    tree = model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, "part-sim-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "part-sim-1-1-0", "1.1.0", "CANARY", canary)],
        [("1.0.0", 70), ("1.1.0", 30)], 5, PAUSE_STEPS)
    if annotation is not None:  # on the RolloutPolicy only (the last document)
        head, _, tail = tree.rpartition(POLICY_META)
        meta = (f"metadata:\n  name: {MODEL}\n  namespace: {TENANT}\n  annotations:\n"
                f"    cadml.io/rollout-command: '{annotation}'")
        tree = head + meta + tail
    return commit_tree(tmp_path, MODEL, tree)


def _policy_status(backend: Backend) -> dict[str, Any]:
    with backend.store.read(TENANT, "t") as tx:
        return tx.statuses()[("RolloutPolicy", MODEL)]


def test_git_commit_cannot_forge_a_rollout_command(tmp_path: Path, corpus_index: BuildResult,
                                                   backend: Backend) -> None:
    """A `cadml.io/rollout-command` annotation committed to Git (no webhook stamps it)
    must not resume the pause: only `cadml rollout resume` (audited with --actor) or the
    webhook-stamped annotation in a cluster may. Before the fix the planner applied it and
    audited the forged user ("k8s:admin")."""
    repo = _steps_tree(tmp_path, corpus_index, None)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _policy_status(backend)["stepPhase"] == "Paused"
    # a commit adds the annotation by hand (no webhook in Git mode)
    forged = json.dumps({"action": "resume", "user": "admin", "id": "forged-1"})
    path = repo / "models" / f"{MODEL}.yaml"
    head, _, tail = path.read_text().rpartition(POLICY_META)
    path.write_text(head + f"metadata:\n  name: {MODEL}\n  namespace: {TENANT}\n"
                    f"  annotations:\n    cadml.io/rollout-command: '{forged}'" + tail)
    git(repo, "commit", "-qam", "resume by hand")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    status = _policy_status(backend)
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        1, "Paused", 10)
    with backend.store.read(TENANT, "t") as tx:
        actors = {event.actor for event in tx.audit_events()}
    assert "k8s:admin" not in actors


def test_refused_command_is_not_audited_as_the_users(tmp_path: Path,
                                                     corpus_index: BuildResult,
                                                     backend: Backend) -> None:
    """A command that does not apply (resume while not paused: the first sync of a new
    plan) is read once and changes nothing; the audit row of the walk must not name the
    command's user as its actor. Before: the row of the new plan was attributed to
    "k8s:<user>" because the command id was consumed."""
    resume = json.dumps({"action": "resume", "user": "mallory", "id": "c-1"})
    repo = _steps_tree(tmp_path, corpus_index, resume)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _policy_status(backend)["stepPhase"] == "Paused"
    with backend.store.read(TENANT, "t") as tx:
        steps_rows = [e for e in tx.audit_events() if e.action == "step"]
    assert steps_rows and all(e.actor != "k8s:mallory" and "user" not in e.details
                              for e in steps_rows)


# ---- shard files as hostile input (`cadml index merge`)

def _one_shard(root: Path) -> Path:
    """A real `--shard 0/1` build of three corpus drawings (shard 0 of 1 owns every path)."""
    src = root / "src"
    src.mkdir()
    for name in ("3dface.dxf", "colors.dxf", "VP4.dxf"):
        shutil.copyfile(DXF_CORPUS / name, src / name)
    shard = root / "s.cadml-shard"
    proc = cadml(root, "build", str(src), "--shard", "0/1", "--out", str(shard),
                 "--workers", "1", "--quiet", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    return shard


def _craft(shard: Path, dest: Path, files: list[dict[str, Any]], vectors: np.ndarray,
           entries: int) -> Path:
    """A shard whose entries and vectors are `files` and `vectors`, checksums made to
    match (what a hostile or careless shard writer can do)."""
    with zipfile.ZipFile(shard) as zf:
        meta = json.loads(zf.read("shard.json"))
    buf = io.BytesIO()
    np.save(buf, vectors.astype(np.float32), allow_pickle=False)
    raw = buf.getvalue()
    meta = {**meta, "files": files, "listing": {**meta["listing"], "entries": entries},
            "vectors": {"file": "vectors.npy", "sha256": hashlib.sha256(raw).hexdigest()}}
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("shard.json", json.dumps(meta))
        zf.writestr("vectors.npy", raw)
    return dest


def _vectors(shard: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    with zipfile.ZipFile(shard) as zf:
        meta = json.loads(zf.read("shard.json"))
        return meta["files"], np.load(io.BytesIO(zf.read("vectors.npy")))


@pytest.mark.parametrize("hostile", ["duplicate-id", "parent-path", "absolute-path"])
def test_merge_refuses_entries_no_build_writes(tmp_path: Path, hostile: str) -> None:
    """A drawing id twice, or an id that is not a relative path below the folder: a single
    build never writes one, so a merge must refuse the shard (shard_damaged, the file
    and field named, nothing written). Before: the merged artifact listed them."""
    shard = _one_shard(tmp_path)
    files, vectors = _vectors(shard)
    skipped = len(json.loads(zipfile.ZipFile(shard).read("shard.json"))["skipped"])
    if hostile == "duplicate-id":
        files, vectors = [*files, files[0]], np.vstack([vectors, vectors[:1]])
    else:
        files = [{**files[0], "id": "../outside.dxf" if hostile == "parent-path"
                  else "/etc/passwd"}, *files[1:]]
    bad = _craft(shard, tmp_path / "bad.cadml-shard", files, vectors, len(files) + skipped)
    out = tmp_path / "out"
    proc = cadml(tmp_path, "merge", str(bad), "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and f"shard {bad}: files" in proc.stderr
    assert not (out / "manifest.json").exists()


def _bomb(shard: Path, dest: Path, size: int) -> Path:
    """The shard with its vectors.npy replaced by `size` bytes of zeros, deflated (a few
    MB on disk): a zip bomb."""
    with zipfile.ZipFile(shard) as zf:
        meta = zf.read("shard.json")
    chunk = bytes(16 * 1024 * 1024)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("shard.json", meta)
        with zf.open("vectors.npy", "w", force_zip64=True) as fh:
            for _ in range(size // len(chunk)):
                fh.write(chunk)
    return dest


def test_merge_refuses_a_zip_bomb_without_inflating_it(tmp_path: Path) -> None:
    """A shard whose vectors.npy inflates to 1.5 GiB (its shard.json lists 3 drawings:
    3 x 512 float32 at most) is refused as damaged from the sizes the archive declares,
    not read: under an address-space limit of 800 MiB (a merge of real shards runs in
    it) the merge answers shard_damaged. Before: the whole member was inflated in
    memory (MemoryError, a traceback)."""
    shard = _one_shard(tmp_path)
    bad = _bomb(shard, tmp_path / "bomb.cadml-shard", 1536 * 1024 * 1024)
    assert bad.stat().st_size < 32 * 1024 * 1024
    limit = 800 * 1024 * 1024
    proc = subprocess.run(
        ["prlimit", f"--as={limit}", sys.executable, "-m", "controller", "index", "merge",
         str(bad), "--out", str(tmp_path / "out")], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and f"shard {bad}: vectors.npy" in proc.stderr


# ---- `cadml index cache prune`

def test_prune_never_follows_a_link_out_of_the_cache(tmp_path: Path) -> None:
    """A link inside the cache folder (an extractor folder linked to shared storage, a
    careless `ln -s`) must not make prune remove files outside the cache, however they
    are named. Before: `glob("*/*/*/*")` followed the link and removed them."""
    cache, outside = tmp_path / "cache", tmp_path / "elsewhere"
    sha = "ab" + "0" * 62
    for folder in (outside / "v4" / "ab", cache / "x1-0000000000000000" / "v4" / "ab"):
        folder.mkdir(parents=True)
        (folder / f"{sha}.json").write_text("{}")
        (folder / ".tmp-keep").write_text("x")
    (cache / "x2-linked").symlink_to(outside, target_is_directory=True)
    old = time.time() - 90 * 86400
    for path in [*outside.rglob("*"), *cache.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            os.utime(path, (old, old))
    proc = cadml(tmp_path, "cache", "prune", "--older-than", "30d", "--cache", str(cache),
                 "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert not (cache / "x1-0000000000000000" / "v4" / "ab" / f"{sha}.json").exists()
    assert sorted(p.name for p in outside.rglob("*") if p.is_file()) == [
        ".tmp-keep", f"{sha}.json"]


# ---- `cadml promote --repo --store` with canary steps

def test_promote_refuses_a_canary_the_steps_did_not_walk(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The steps walked canary 1.1.0 to ReadyToPromote; a second CANARY, 1.2.0, outside the
    weights, never took a request. `promote 1.2.0 --repo --store` must be refused (the
    steps say nothing of it). Before: the gate only asked whether the plan was done, and
    1.2.0 became STABLE with 70 % of the traffic."""
    stable, canary, other = copy_artifacts(tmp_path, corpus_index,
                                           ["art-stable", "art-canary", "art-other"])
    tree = model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, "part-sim-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "part-sim-1-1-0", "1.1.0", "CANARY", canary),
        version_doc(TENANT, MODEL, "part-sim-1-2-0", "1.2.0", "CANARY", other)],
        [("1.0.0", 70), ("1.1.0", 30)], 5, "  strategy:\n    steps:\n      - setWeight: 10\n")
    repo = commit_tree(tmp_path, MODEL, tree)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _policy_status(backend)["stepPhase"] == "ReadyToPromote"
    head = git(repo, "rev-parse", "HEAD")
    capsys.readouterr()
    code = main(["promote", f"{TENANT}/{MODEL}", "--version", "1.2.0", "--reason", "walked",
                 "--repo", str(repo), "--author", "Alice <alice@acme.example>",
                 "--store", backend.app_url])
    assert code == 2, capsys.readouterr()
    assert git(repo, "rev-parse", "HEAD") == head


# ---- `cadml rollback --repo` of a policy with canary steps

def test_rollback_in_git_of_a_policy_with_steps(tmp_path: Path, corpus_index: BuildResult,
                                                backend: Backend,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The emergency path must work mid-walk: `cadml rollback --repo` commits a policy that
    validates (weights STABLE=100; steps walk one canary, so they go with it) and, once
    reconciled, routes everything to STABLE. Before: the commit kept spec.strategy with one
    weight, a policy `cadml validate` refuses (policy.steps-one-canary)."""
    repo = _steps_tree(tmp_path, corpus_index, None)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    code = main(["rollback", f"{TENANT}/{MODEL}", "--reason", "bad canary", "--repo",
                 str(repo), "--author", "Alice <alice@acme.example>"])
    out = capsys.readouterr()
    assert code == 0, out
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(repo)]) == 0
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    with backend.store.read(TENANT, "t") as tx:
        snap = tx.snapshot(MODEL)
    assert snap is not None and [(r.version, r.weight) for r in snap.routes] == [
        ("1.0.0", 100)]


# ---- the operator's periodic driver on a replica that stops being the active one

def test_periodic_driver_stops_once_the_replica_is_paused() -> None:
    """Fake clock and peering answer (the rule itself, peers_allow, is tested on a real
    peering object in tests/e2e/test_peering.py): tenant a is due at t=10, tenant b
    (first seen at t=1) at t=11; the peering says 'paused' from t=10.5 on."""
    from controller.operator.periodic import PeriodicDriver

    now = [0.0]
    seen = [["a"]]
    ran: list[tuple[str, str]] = []
    driver = PeriodicDriver(tenants=lambda: seen[0], finished=lambda t: None,
                            repair=lambda t: ran.append(("repair", t)),
                            analyse=lambda t: ran.append(("analyse", t)),
                            interval=10.0, analysis_interval=10.0,
                            active=lambda: now[0] < 10.5, clock=lambda: now[0])
    driver.tick()
    now[0], seen[0] = 1.0, ["a", "b"]
    driver.tick()
    now[0] = 10.0
    assert {t for _, t in driver.tick()} == {"a"}  # active: a runs
    now[0] = 11.0
    assert driver.tick() == []  # paused since 10.5: b must wait for the new leader


# ---- canary steps under a manual override

TIMED_STEPS = """  override: {version: 1.0.0, reason: canary misbehaves}
  strategy:
    steps:
      - setWeight: 10
      - pause: {duration: 1h}
      - setWeight: 50
      - pause: {duration: 1h}
"""


def test_steps_do_not_pass_while_an_override_routes(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An override sends everything to STABLE: the canary takes no request, so its timed
    pauses observe nothing. Three hours of override must not walk the plan to
    ReadyToPromote (and so let `cadml promote --repo --store` commit a canary nobody
    watched). Before: the pauses elapsed under the override, the status said
    ReadyToPromote and the promotion was committed."""
    from datetime import UTC, datetime, timedelta

    stable, canary = copy_artifacts(tmp_path, corpus_index, ["art-stable", "art-canary"])
    repo = commit_tree(tmp_path, MODEL, model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, "part-sim-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "part-sim-1-1-0", "1.1.0", "CANARY", canary)],
        [("1.0.0", 70), ("1.1.0", 30)], 5, TIMED_STEPS))
    t0 = datetime.now(UTC)
    for hours in (0, 1.5, 3):
        assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7,
                              now=t0 + timedelta(hours=hours)).ok
    status = _policy_status(backend)
    assert status["canaryWeight"] == 0  # the override routes
    assert status["stepPhase"] != "ReadyToPromote", status
    head = git(repo, "rev-parse", "HEAD")
    code = main(["promote", f"{TENANT}/{MODEL}", "--version", "1.1.0", "--reason", "walked",
                 "--repo", str(repo), "--author", "Alice <alice@acme.example>",
                 "--store", backend.app_url])
    assert code == 2, capsys.readouterr()
    assert git(repo, "rev-parse", "HEAD") == head


def test_periodic_driver_outlives_a_failed_round() -> None:
    """One round that fails outside a tenant's own work (reading the tenants raised) must
    not end the operator's only periodic loop: the tenant is repaired a round later.
    Before: `run()` let the exception end its task, and no tenant was ever repaired or
    analysed again (until a restart)."""
    import asyncio

    from controller.operator.periodic import PeriodicDriver

    async def scenario() -> None:
        repaired = asyncio.Event()
        loop = asyncio.get_running_loop()
        calls = [0]

        def tenants() -> list[str]:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("the API server went away for a moment")
            return ["a"]

        driver = PeriodicDriver(tenants=tenants, finished=lambda t: None,
                                repair=lambda t: loop.call_soon_threadsafe(repaired.set),
                                analyse=lambda t: None, interval=1.0, analysis_interval=1.0)
        task = asyncio.create_task(driver.run())
        try:
            await asyncio.wait_for(repaired.wait(), 30)
        finally:
            task.cancel()
    asyncio.run(scenario())


def test_a_changing_index_does_not_push_a_tenants_repair_back() -> None:
    """The tenants are read from kopf's indexes while kopf changes them (another thread):
    a read that keeps failing must not look like "no tenants", which made the driver
    forget every tenant and see it anew (first due an interval later): under steady churn
    a tenant was never repaired. Fake clock; the indexes as the real `tenants_in` reads
    them, one of them changing during three reads in a row."""
    from controller.operator.handlers import INDEXES, tenants_in
    from controller.operator.periodic import PeriodicDriver

    churn = [0]

    class Changing(dict[str, Any]):
        def __iter__(self) -> Any:
            if churn[0] > 0:
                churn[0] -= 1
                raise RuntimeError("dictionary changed size during iteration")
            return super().__iter__()

    indexes = {INDEXES[0]: Changing({"acme-cad": {}})}
    now = [0.0]
    driver = PeriodicDriver(tenants=lambda: tenants_in(indexes), finished=lambda t: None,
                            repair=lambda t: None, analyse=lambda t: None, interval=10.0,
                            analysis_interval=10.0, clock=lambda: now[0])
    driver.tick()  # first seen at 0: due at 10
    now[0], churn[0] = 5.0, 3
    with pytest.raises(RuntimeError):  # a failed round; run() goes on (test above)
        driver.tick()
    now[0] = 10.0
    assert ("repair", "acme-cad") in driver.tick()
