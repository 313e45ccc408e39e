"""The chart's sharded index build (`indexBuild`): an Indexed Job and a merge Job that
render, pass strict server-side dry-run against the real API server, and whose rendered
commands, run here as the pods would run them (JOB_COMPLETION_INDEX set, the same shell
lines), build the artifact one `cadml index build` writes."""

from __future__ import annotations

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
    claims = {v["name"]: v for v in pod["volumes"]}
    assert claims["data"]["persistentVolumeClaim"] == {"claimName": "cad-corpus"}
    mpod = merge["spec"]["template"]["spec"]
    assert [c["name"] for c in mpod["initContainers"]] == ["wait-for-shards"]
    assert "cadml index merge '/data/shards/parts-v5'/shard-*-of-8.cadml-shard" in \
        mpod["containers"][0]["args"][0]
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


def test_the_rendered_job_commands_build_the_single_build_artifact(helm: str,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """The pods' shell lines, run here with `cadml` on PATH (this checkout) and the volume's
    mount path pointed at a folder: N shard processes at once, the init container's wait
    (still waiting with 2 of 3 shards, done with 3), then the merge."""
    data = tmp_path / "data"
    (data / "drawings").mkdir(parents=True)
    for name in SUBSET:
        shutil.copyfile(DXF_CORPUS / name, data / "drawings" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cadml").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m controller "$@"\n')
    (bin_dir / "cadml").chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HOME": str(tmp_path)}
    found = jobs(_template(
        helm, *ENABLED, "indexBuild.shards=3", "indexBuild.workersPerShard=1",
        f"indexBuild.volume.mountPath={data}", f"indexBuild.source={data}/drawings",
        f"indexBuild.shardsDir={data}/shards", f"indexBuild.cacheDir={data}/cache",
        f"indexBuild.outDir={data}/artifacts"))
    shard_line = _shell(found["index-parts-v4-shards"], "shard")
    wait_line = _shell(found["index-parts-v4-merge"], "wait-for-shards")
    merge_line = _shell(found["index-parts-v4-merge"], "merge")

    def shard(i: int) -> subprocess.Popen[str]:
        return subprocess.Popen(["/bin/sh", "-c", shard_line], env={
            **env, "JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def waits() -> int:  # the init container's loop, cut short after 4 s
        return subprocess.run(["timeout", "4", "/bin/sh", "-c", wait_line], env=env,
                              check=False, timeout=60).returncode

    first = [shard(0), shard(1)]
    for proc in first:
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert waits() == 124  # two of three shard files: the merge does not start
    last = shard(2)
    assert last.wait(timeout=300) == 0
    assert waits() == 0

    merge = subprocess.run(["/bin/sh", "-c", merge_line], env=env, capture_output=True,
                           text=True, check=False, timeout=300)
    assert merge.returncode == 0, merge.stderr
    single = subprocess.run(
        [sys.executable, "-m", "controller", "index", "build", str(data / "drawings"), "--out",
         str(tmp_path / "single"), "--no-cache", "--quiet"],
        env=env, capture_output=True, text=True, check=False, timeout=300)
    assert single.returncode == 0, single.stderr
    out = data / "artifacts" / "parts-v4"
    assert artifact_bytes(out) == artifact_bytes(tmp_path / "single")
    printed = re.search(r"artifact: \{uri: (\S+), sha256: (\w+), format: faiss-index\}",
                        merge.stdout)
    assert printed is not None, merge.stdout
    assert printed.group(1) == (out / "manifest.json").as_uri()
    assert printed.group(2) in single.stdout
