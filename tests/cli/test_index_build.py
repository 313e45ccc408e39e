"""`cadml index build` at corpus scale, as a user runs it (a subprocess over a copy of the
real corpus): the extractor identity in the manifest, the incremental feature cache
(byte-identical to a clean build, only changed drawings parsed), progress on stderr
only, and `--resume` after the build was killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.features.identity import FEATURE_CODE_VERSION, extractor_version
from tests.conftest import DXF_CORPUS, ROOT

ARTIFACT_FILES = ("manifest.json", "vectors.npy", "index.faiss")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    return {**env, "PYTHONPATH": str(ROOT), "HOME": str(home)}


def cadml(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "index", "build", *args],
                          capture_output=True, text=True, env=_env(home), timeout=300,
                          check=False)


def build_json(home: Path, *args: str) -> dict[str, Any]:
    proc = cadml(home, *args, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    return result


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A writable copy of the real corpus (the shared one is read-only)."""
    dest = tmp_path / "src"
    shutil.copytree(DXF_CORPUS, dest, copy_function=shutil.copyfile)
    return dest


def artifact_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ARTIFACT_FILES}


def comment(path: Path, text: str) -> None:
    """Change a drawing's bytes without changing its geometry (a DXF 999 comment)."""
    path.write_bytes(f"999\n{text}\n".encode() + path.read_bytes())


def test_the_manifest_records_the_extractor_identity(tmp_path: Path, src: Path) -> None:
    result = build_json(tmp_path, str(src), "--out", str(tmp_path / "out"), "--quiet")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["extractorVersion"] == extractor_version()
    assert manifest["extractorVersion"].startswith(f"x{FEATURE_CODE_VERSION}-")
    assert manifest["extractor"]["ezdxf"]  # what the identity is made of, for a human
    assert result["extractorVersion"] == extractor_version()


def test_a_cached_rebuild_parses_only_changed_drawings_and_equals_a_clean_build(
        tmp_path: Path, src: Path) -> None:
    cache = tmp_path / "cache"
    (src / "not-a-drawing.dxf").write_bytes(b"0\nSECTION\n2\nENTITIES\n0\nENDSEC\n")
    (src / "half.dxf").write_bytes((src / "hatches_2.dxf").read_bytes()[:20000])
    first = build_json(tmp_path, str(src), "--out", str(tmp_path / "first"), "--cache",
                       str(cache), "--quiet")
    total = first["indexed"] + len(first["skipped"])
    assert first["parsed"] == total and first["reused"] == 0
    assert [(s["file"], s["code"]) for s in first["skipped"]] == [  # refusals are cached
        ("half.dxf", "no_entities"), ("not-a-drawing.dxf", "no_entities")]

    os.utime(src / "text.dxf", (1, 1))                            # touched: same bytes
    comment(src / "hatches_2.dxf", "changed")                     # changed
    (src / "3dface.dxf").rename(src / "renamed-3dface.dxf")       # renamed: same bytes
    shutil.copyfile(src / "Minimal_DXF_AC1009.dxf", src / "added.dxf")
    comment(src / "added.dxf", "a new drawing")                   # added
    (src / "Minimal_DXF_AC1006.dxf").unlink()                     # removed

    again = build_json(tmp_path, str(src), "--out", str(tmp_path / "again"), "--cache",
                       str(cache), "--quiet")
    assert (again["parsed"], again["reused"]) == (2, total - 2)
    clean = build_json(tmp_path, str(src), "--out", str(tmp_path / "clean"), "--no-cache",
                       "--quiet")
    assert clean["parsed"] == total and clean["reused"] == 0
    assert artifact_bytes(tmp_path / "again") == artifact_bytes(tmp_path / "clean")
    assert again["sha256"] == clean["sha256"] != first["sha256"]
    ids = [f["id"] for f in json.loads((tmp_path / "again" / "manifest.json").read_text())
           ["files"]]
    assert "added.dxf" in ids and "renamed-3dface.dxf" in ids
    assert "Minimal_DXF_AC1006.dxf" not in ids and "3dface.dxf" not in ids


def test_a_damaged_cache_entry_is_parsed_again(tmp_path: Path, src: Path) -> None:
    cache = tmp_path / "cache"
    build_json(tmp_path, str(src), "--out", str(tmp_path / "a"), "--cache", str(cache),
               "--quiet")
    entries = sorted(cache.rglob("*.json"))
    entries[0].write_text('{"sha256": "not this one", "vector": [1, 2')
    entries[1].write_text(json.dumps({**json.loads(entries[1].read_text()), "sha256": "0" * 64}))
    again = build_json(tmp_path, str(src), "--out", str(tmp_path / "b"), "--cache", str(cache),
                       "--quiet")
    assert again["parsed"] == 2
    assert artifact_bytes(tmp_path / "a") == artifact_bytes(tmp_path / "b")


def test_the_default_cache_lives_under_the_home_cache_folder(tmp_path: Path, src: Path
                                                             ) -> None:
    build_json(tmp_path, str(src), "--out", str(tmp_path / "a"), "--quiet")
    root = tmp_path / ".cache" / "cadml" / "features" / extractor_version() / "v4"
    assert len(list(root.rglob("*.json"))) >= 40
    again = build_json(tmp_path, str(src), "--out", str(tmp_path / "b"), "--quiet")
    assert again["parsed"] == 0


def test_progress_shows_rate_and_eta_on_stderr_and_json_stays_clean(tmp_path: Path,
                                                                     src: Path) -> None:
    proc = cadml(tmp_path, str(src), "--out", str(tmp_path / "out"), "--no-cache", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    total = result["indexed"] + len(result["skipped"])
    lines = [line for line in proc.stderr.splitlines() if "drawings/s" in line]
    assert len(lines) == total and all("ETA " in line for line in lines)
    assert lines[-1].split()[1] == f"{total}/{total}" and "ETA 0:00:00" in lines[-1]


def test_resume_continues_a_killed_build(tmp_path: Path, src: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "index", "build", str(src), "--out", str(out),
         "--cache", str(cache), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        start_new_session=True)
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:  # wait for a positive signal: ten drawings reported done
        seen += "drawings/s" in line
        if seen == 10:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    resumed = build_json(tmp_path, str(src), "--out", str(out), "--cache", str(cache),
                         "--resume", "--quiet")
    total = resumed["indexed"] + len(resumed["skipped"])
    assert resumed["reused"] >= 10 and resumed["parsed"] == total - resumed["reused"]
    build_json(tmp_path, str(src), "--out", str(tmp_path / "clean"), "--no-cache", "--quiet")
    assert artifact_bytes(out) == artifact_bytes(tmp_path / "clean")


def test_resume_without_the_cache_is_a_usage_error(tmp_path: Path, src: Path) -> None:
    proc = cadml(tmp_path, str(src), "--out", str(tmp_path / "out"), "--no-cache", "--resume")
    assert proc.returncode == 2
    assert "--resume needs the feature cache" in proc.stderr and "--no-cache" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_cache_is_refused_before_any_work(tmp_path: Path, src: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = cadml(tmp_path, str(src), "--out", str(tmp_path / "out"), "--cache", str(blocker))
    assert proc.returncode == 2, proc.stderr
    assert f"feature cache {blocker}: cannot write" in proc.stderr
    assert "--no-cache" in proc.stderr
    assert "Traceback" not in proc.stderr and "drawings/s" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_default_cache_builds_without_it_and_says_so(tmp_path: Path,
                                                                   src: Path) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("a read-only home, as in a container")
    proc = cadml(home, str(src), "--out", str(tmp_path / "out"), "--quiet", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: feature cache" in proc.stderr and "building without the cache" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["cache"] is None and result["parsed"] == result["indexed"] > 40
    resume = cadml(home, str(src), "--out", str(tmp_path / "out2"), "--quiet", "--resume")
    assert resume.returncode == 2 and "cannot write there" in resume.stderr
