"""The chart's sharded index build (`indexBuild`): an Indexed Job and a merge Job that
render, pass strict server-side dry-run against the real API server, and whose rendered
commands, run here as the pods would run them (JOB_COMPLETION_INDEX set, the same shell
lines), build the artifact one `cadml index build` writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.cli.test_index_shards import SUBSET, artifact_bytes
from tests.conftest import DXF_CORPUS, ROOT
from tests.e2e.controlplane import ControlPlane
from tests.e2e.test_chart import _template, helm  # noqa: F401  - the helm fixture

ENABLED = ("indexBuild.enabled=true", "indexBuild.volume.claimName=cad-corpus")


def jobs(rendered: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered)
            if d and d["kind"] == "Job"}


def test_the_index_build_is_off_by_default(helm: str) -> None:  # noqa: F811
    assert jobs(_template(helm)) == {}


def test_the_indexed_job_and_the_merge_job_pass_strict_server_side_dry_run(
        helm: str, control_plane: ControlPlane) -> None:  # noqa: F811
    rendered = _template(helm, *ENABLED, "indexBuild.shards=8", "indexBuild.name=parts-v5")
    found = jobs(rendered)
    shards, merge = found["index-parts-v5-shards"], found["index-parts-v5-merge"]
    spec = shards["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 4)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (shard,) = pod["containers"]
    assert '--shard "$JOB_COMPLETION_INDEX/8"' in shard["args"][0]
    assert "shard-\"$JOB_COMPLETION_INDEX\"-of-8.cadml-shard" in shard["args"][0]
    assert '--attempt "$((${INDEX_FAILURES:-0} + 1))" --attempts 4' in shard["args"][0]
    assert spec["backoffLimitPerIndex"] == 3
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailIndex",
         "onExitCodes": {"containerName": "shard", "operator": "In", "values": [1]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    failures = {e["name"]: e for e in shard["env"]}["INDEX_FAILURES"]
    assert failures["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"
    assert merge["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    claims = {v["name"]: v for v in pod["volumes"]}
    assert claims["data"]["persistentVolumeClaim"] == {"claimName": "cad-corpus"}
    mpod = merge["spec"]["template"]["spec"]
    assert "initContainers" not in mpod  # the merge waits itself, and fails fast
    assert "cadml index merge '/data/shards/parts-v5/shard-{I}-of-8.cadml-shard' --shards 8 " \
        "--wait" in mpod["containers"][0]["args"][0]
    for p in (pod, mpod):  # read-only root: /tmp (HOME, the parser sandbox) is a volume
        volumes = {v["name"] for v in p["volumes"]}
        for c in p["containers"] + p.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in c["volumeMounts"] if m["name"] in volumes}
            assert mounts == {"/tmp", "/data"}
            assert {"name": "HOME", "value": "/tmp"} in c["env"]
    control_plane.kubectl("create", "namespace", "cadml-system", check=False)
    proc = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                 stdin=rendered, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "index-parts-v5-shards" in proc.stdout and "index-parts-v5-merge" in proc.stdout


def test_an_index_build_needs_a_volume_and_a_dns_name(helm: str) -> None:  # noqa: F811
    for values, says in ((("indexBuild.enabled=true",), "indexBuild.volume.claimName"),
                         ((*ENABLED, "indexBuild.name=Parts_V4"), "indexBuild.name: a DNS label")):
        args = [helm, "template", "cadml", str(ROOT / "charts" / "cadml"), "--kube-version",
                "1.35.4", *[a for v in values for a in ("--set", v)]]
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode != 0 and says in proc.stderr


def _shell(job: dict[str, Any], container: str) -> str:
    pod = job["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] + pod.get("initContainers", [])
            if c["name"] == container]
    assert c["command"] == ["/bin/sh", "-c"]
    line: str = c["args"][0]
    return line


def _tools(tmp_path: Path, data: Path, killed: bool = False) -> dict[str, str]:
    """The drawings below DATA/drawings, and `cadml` on PATH (this checkout). `killed`: the
    shim kills the build process as the kernel's OOM killer would (SIGKILL; a real OOM kill
    needs a memory-limited cgroup), and lets `--record-failure` and the merge through."""
    (data / "drawings").mkdir(parents=True)
    for name in SUBSET:
        shutil.copyfile(DXF_CORPUS / name, data / "drawings" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kill = ('case "$*" in *--record-failure*) ;; "index build"*) kill -9 $$ ;; esac\n'
            if killed else "")
    (bin_dir / "cadml").write_text(
        f'#!/bin/sh\n{kill}exec "{sys.executable}" -m controller "$@"\n')
    (bin_dir / "cadml").chmod(stat.S_IRWXU)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "HOME": str(tmp_path)}


def _render(helm: str, data: Path, *values: str) -> dict[str, dict[str, Any]]:  # noqa: F811
    return jobs(_template(
        helm, *ENABLED, "indexBuild.workersPerShard=1", f"indexBuild.volume.mountPath={data}",
        f"indexBuild.source={data}/drawings", f"indexBuild.shardsDir={data}/shards",
        f"indexBuild.cacheDir={data}/cache", f"indexBuild.outDir={data}/artifacts", *values))


def _start(line: str, env: dict[str, str], **more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["/bin/sh", "-c", line], env={**env, **more},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_rendered_job_commands_build_the_single_build_artifact(helm: str,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """The pods' shell lines, run here with the volume's mount path pointed at a folder: N
    shard processes at once, the merge waiting (2 of 3 shards there), merging once the
    third is."""
    data = tmp_path / "data"
    env = _tools(tmp_path, data)
    found = _render(helm, data, "indexBuild.shards=3")
    shard_line = _shell(found["index-parts-v4-shards"], "shard")
    merge_line = _shell(found["index-parts-v4-merge"], "merge")

    first = [_start(shard_line, env, JOB_COMPLETION_INDEX=str(i)) for i in (0, 1)]
    for proc in first:
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    waiting = _start(merge_line, env)
    assert waiting.stderr is not None
    assert waiting.stderr.readline() == "waiting for 1 of 3 shard files\n"
    last = _start(shard_line, env, JOB_COMPLETION_INDEX="2")
    assert last.wait(timeout=300) == 0
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stderr
    single = subprocess.run(
        [sys.executable, "-m", "controller", "index", "build", str(data / "drawings"), "--out",
         str(tmp_path / "single"), "--no-cache", "--quiet"],
        env=env, capture_output=True, text=True, check=False, timeout=300)
    assert single.returncode == 0, single.stderr
    out = data / "artifacts" / "parts-v4"
    assert artifact_bytes(out) == artifact_bytes(tmp_path / "single")
    printed = re.search(r"artifact: \{uri: (\S+), sha256: (\w+), format: faiss-index\}",
                        stdout)
    assert printed is not None, stdout
    assert printed.group(1) == (out / "manifest.json").as_uri()
    assert printed.group(2) in single.stdout


def test_a_shard_pod_killed_on_its_last_attempt_fails_the_merge_at_once(
        helm: str, tmp_path: Path) -> None:  # noqa: F811
    """The shard's build process is killed (SIGKILL, as by the OOM killer) on the last of
    its 2 attempts (the Job's annotation says 1 failure before): the shell line records
    the failure and exits 137, and the merge fails naming the shard, not after 24 h."""
    data = tmp_path / "data"
    env = _tools(tmp_path, data, killed=True)
    found = _render(helm, data, "indexBuild.shards=2", "indexBuild.backoffLimitPerIndex=1")
    shard_line = _shell(found["index-parts-v4-shards"], "shard")
    merge = _start(_shell(found["index-parts-v4-merge"], "merge"), env)
    killed = _start(shard_line, env, JOB_COMPLETION_INDEX="1", INDEX_FAILURES="1")
    assert killed.wait(timeout=120) == 137
    marker = data / "shards" / "parts-v4" / "shard-1-of-2.cadml-shard.failed"
    record = json.loads(marker.read_text())
    assert (record["shard"], record["attempt"], record["attempts"], record["final"]) == \
        ("1/2", 2, 2, True)
    _, stderr = merge.communicate(timeout=60)  # the positive signal: the merge exits
    assert merge.returncode == 1, stderr
    assert "1 shard(s) failed for good: 1/2 (shard-1-of-2.cadml-shard: attempt 2 of 2, " \
           "exit code 137: the shard build ended with exit code 137 (killed by signal 9" \
           in stderr, stderr
    assert not (data / "artifacts" / "parts-v4").exists()
