"""`cadml index merge` does not hold every drawing's entry as a dict: run in-process
(tracemalloc sees its Python allocations, which a subprocess would hide) over synthetic
shard files in the real format (bench.shard_bench.synthetic). tracemalloc counts
allocations, not time: the bound is stable on a loaded machine.
Measured at 20,000 drawings in 4 shards: 1,698 bytes a drawing before (every shard's
entries as dicts, a merged copy of them and the manifest's whole text), 531 after."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from bench.shard_bench import synthetic
from controller.cli import main


def test_a_merge_holds_far_less_than_a_dict_per_drawing(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    n = 20_000
    shards = synthetic(tmp_path / "shards", n, 4)
    import faiss  # noqa: F401  (imported first: its import allocates, the merge does not)

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        code = main(["index", "merge", *map(str, shards), "--out", str(tmp_path / "out"),
                     "--output", "json"])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert code == 0
    assert json.loads(capsys.readouterr().out)["indexed"] == n
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text("utf-8"))
    assert len(manifest["files"]) == n
    assert peak / n < 1000, f"{peak / n:.0f} bytes a drawing"
