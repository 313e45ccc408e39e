"""`cadml index cache prune`: entries no build used for --older-than go, entries a build
used lately stay (a build marks every entry it uses), and nothing that is not a cache
entry is ever removed. Real builds over real corpus drawings, through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import DXF_CORPUS, ROOT

DAY = 86400.0


def cadml(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    return subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(ROOT), "HOME": str(home)},
                          timeout=600, check=False)


def ok_json(home: Path, *args: str) -> dict[str, Any]:
    proc = cadml(home, *args, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def age(root: Path, days: float) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (time.time() - days * DAY,) * 2)


def test_prune_removes_what_no_build_used_lately_and_nothing_else(tmp_path: Path) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    for name in ("3dface.dxf", "VP4.dxf", "colors.dxf"):
        shutil.copyfile(DXF_CORPUS / name, src / name)
    build = ("index", "build", str(src), "--cache", str(cache), "--quiet")
    assert ok_json(tmp_path, *build, "--out", str(tmp_path / "a"))["parsed"] == 3
    (cache / "notes.json").write_text("{}")  # not entries: never removed, however old
    (cache / "x1-0000000000000000" / "v4" / "ab").mkdir(parents=True)
    (cache / "x1-0000000000000000" / "v4" / "ab" / "mine.json").write_text("{}")
    (cache / "x1-0000000000000000" / "v4" / "ab" / ("ab" * 32 + ".json")).write_text("{}")
    age(cache, 40)  # every entry last used 40 days ago ...
    (src / "colors.dxf").unlink()
    again = ok_json(tmp_path, *build, "--out", str(tmp_path / "b"))  # ... two used today
    assert (again["parsed"], again["reused"]) == (0, 2)

    dry = ok_json(tmp_path, "index", "cache", "prune", "--older-than", "30d", "--cache",
                  str(cache), "--dry-run")
    assert (dry["removed"], dry["kept"], dry["dryRun"]) == (2, 2, True)
    assert len(list(cache.rglob("*.json"))) == 6
    pruned = ok_json(tmp_path, "index", "cache", "prune", "--older-than", "30d", "--cache",
                     str(cache))
    assert (pruned["removed"], pruned["kept"]) == (2, 2) and pruned["bytes"] > 0
    assert (cache / "notes.json").exists()
    assert (cache / "x1-0000000000000000" / "v4" / "ab" / "mine.json").exists()
    assert not (cache / "x1-0000000000000000" / "v4" / "ab" / ("ab" * 32 + ".json")).exists()

    kept = ok_json(tmp_path, *build, "--out", str(tmp_path / "c"))
    assert (kept["parsed"], kept["reused"]) == (0, 2)  # what was used stayed
    shutil.copyfile(DXF_CORPUS / "colors.dxf", src / "colors.dxf")
    back = ok_json(tmp_path, *build, "--out", str(tmp_path / "d"))
    assert (back["parsed"], back["reused"]) == (1, 2)  # what was not used went


def test_prune_refuses_a_missing_cache_and_a_bad_span(tmp_path: Path) -> None:
    missing = cadml(tmp_path, "index", "cache", "prune", "--older-than", "30d", "--cache",
                    str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    bad = cadml(tmp_path, "index", "cache", "prune", "--older-than", "soon", "--cache",
                str(tmp_path))
    assert bad.returncode == 2 and "--older-than 'soon'" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr
