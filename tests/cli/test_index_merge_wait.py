"""`cadml index merge --wait` as the merge Job runs it: shard builds in local processes,
one of them failing for real (its feature cache cannot be written). A shard failed for
good fails the waiting merge at once, naming the shard; a failed attempt that will be
retried does not, and the merge goes on once the retry's shard file is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.test_index_shards import SUBSET, _env, artifact_bytes, cadml
from tests.conftest import DXF_CORPUS

N = 3


def corpus(root: Path) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    for name in SUBSET[:6]:
        (src / name).write_bytes((DXF_CORPUS / name).read_bytes())
    return src


def shard(home: Path, src: Path, shards: Path, i: int, *extra: str
          ) -> subprocess.CompletedProcess[str]:
    return cadml(home, "build", str(src), "--shard", f"{i}/{N}", "--out",
                 str(shards / f"shard-{i}-of-{N}.cadml-shard"), "--workers", "1", "--quiet",
                 *extra)


def start_merge(home: Path, shards: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "index", "merge",
         str(shards / f"shard-{{I}}-of-{N}.cadml-shard"), "--shards", str(N), "--wait",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home))


def test_a_shard_that_failed_for_good_fails_the_waiting_merge_naming_it(tmp_path: Path
                                                                         ) -> None:
    src, shards = corpus(tmp_path), tmp_path / "shards"
    shards.mkdir()
    for i in (0, 1):
        assert shard(tmp_path, src, shards, i).returncode == 0
    merge = start_merge(tmp_path, shards, tmp_path / "out")
    (tmp_path / "not-a-folder").write_text("")
    failed = shard(tmp_path, src, shards, 2, "--cache", str(tmp_path / "not-a-folder" / "c"))
    assert failed.returncode == 2, failed.stderr
    marker = json.loads((shards / f"shard-2-of-{N}.cadml-shard.failed").read_text())
    assert (marker["shard"], marker["final"], marker["exitCode"]) == ("2/3", True, 2)
    # the positive signal: the merge exits (bounded by the Job's deadline here: 60 s)
    _, err = merge.communicate(timeout=60)
    assert merge.returncode == 1, err
    assert "1 shard(s) failed for good: 2/3 (shard-2-of-3.cadml-shard: attempt 1 of 1, " \
           "exit code 2: feature cache" in err, err
    assert not (tmp_path / "out").exists()


def test_a_failed_attempt_with_a_retry_to_come_keeps_the_merge_waiting(tmp_path: Path
                                                                        ) -> None:
    src, shards = corpus(tmp_path), tmp_path / "shards"
    shards.mkdir()
    for i in (0, 1):
        assert shard(tmp_path, src, shards, i).returncode == 0
    (tmp_path / "not-a-folder").write_text("")
    first = shard(tmp_path, src, shards, 2, "--attempt", "1", "--attempts", "2",
                  "--cache", str(tmp_path / "not-a-folder" / "c"))
    assert first.returncode == 2
    marker = shards / f"shard-2-of-{N}.cadml-shard.failed"
    assert json.loads(marker.read_text())["final"] is False
    merge = start_merge(tmp_path, shards, tmp_path / "out")
    assert merge.stderr is not None
    # it looked (the marker was there already) and waits
    assert merge.stderr.readline() == f"waiting for 1 of {N} shard files\n"
    retry = shard(tmp_path, src, shards, 2, "--attempt", "2", "--attempts", "2")
    assert retry.returncode == 0, retry.stderr
    assert not marker.exists()
    _, err = merge.communicate(timeout=120)
    assert merge.returncode == 0, err
    single = cadml(tmp_path, "build", str(src), "--out", str(tmp_path / "single"), "--no-cache",
                   "--quiet")
    assert single.returncode == 0, single.stderr
    assert artifact_bytes(tmp_path / "out") == artifact_bytes(tmp_path / "single")


def test_a_pattern_needs_its_count_and_comes_alone(tmp_path: Path) -> None:
    for args, says in (((str(tmp_path / "s-{I}"),), "with --shards N"),
                       ((str(tmp_path / "a"), "--shards", "2"), "give one SHARD naming {I}"),
                       ((str(tmp_path / "a"), "--wait-timeout", "5"), "needs --wait")):
        proc = cadml(tmp_path, "merge", *args, "--out", str(tmp_path / "out"))
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr


def test_a_recorded_failure_beyond_its_attempts_is_refused_and_marks_nothing(
        tmp_path: Path) -> None:
    """`--record-failure` (the Job's shell line after a kill) with `--attempt 3 --attempts
    2` wrote a final marker for an attempt the Job never makes: refused like the build
    itself refuses it (exit 2), and no marker that would fail a waiting merge."""
    src, shards = corpus(tmp_path), tmp_path / "shards"
    shards.mkdir()
    proc = shard(tmp_path, src, shards, 1, "--attempt", "3", "--attempts", "2",
                 "--record-failure", "137")
    assert proc.returncode == 2 and "--attempt 3: more than --attempts 2" in proc.stderr, \
        proc.stderr
    assert list(shards.iterdir()) == []
