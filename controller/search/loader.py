"""Deserialising pickle and npz artifacts in a child process with memory and CPU limits.

A whitelist-clean pickle can still be a bomb (an 11-byte LONG_BINPUT memo bomb
asks for gigabytes, `ids: range(10**10)` never ends) and an npz is a zip that can
inflate a thousandfold. So the worker never deserialises them itself: a child
process, started with a minimal environment and no inherited files, under
RLIMIT_AS and RLIMIT_CPU, scans and loads the artifact and writes plain `.npy`
arrays (vectors float32, ids unicode) that the worker reads with
`allow_pickle=False`. Sizes are checked before anything is read or inflated. A
child that runs out of memory or time is a structured error, never a worker crash.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import StructuredError
from controller.features.sandbox import CHILD_ENV
from controller.search.pickle_scan import ScanReport, UnsafeArtifact, safe_load


@dataclass(frozen=True)
class LoaderLimits:
    memory_bytes: int = 2 * 1024**3  # address space of the loading child
    cpu_seconds: float = 60.0
    max_inflated_bytes: int = 1024**3  # an npz's arrays, uncompressed, at most


class ArtifactError(StructuredError):
    """An artifact that cannot be served (re-exported by `artifacts`, its home for callers)."""

    reason = "ArtifactError"
    exit_code = 1

    def __init__(self, message: str, *, code: str, context: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(message, code=code, stage="artifact", context=context)


def load_arrays(path: Path, fmt: str, *, pickle_mode: str, pickle_max_bytes: int,
                limits: LoaderLimits | None = None
                ) -> tuple[list[str], np.ndarray, ScanReport | None]:
    """(ids, vectors, scan report) of a pickle or npz artifact, loaded in a child."""
    limits = limits or LoaderLimits()
    with _child(fmt, path, limits, pickle_mode, str(pickle_max_bytes)) as (result, out):
        ids = np.load(out / "ids.npy", allow_pickle=False)
        vectors = np.load(out / "vectors.npy", allow_pickle=False)
    return [str(i) for i in ids.tolist()], vectors, _report(result.get("report"))


def check_faiss(path: Path, kind: str, limits: LoaderLimits | None = None) -> int:
    """The size of a faiss index, read first by a child: a crafted index that crashes
    or exhausts faiss takes down the child, not the worker."""
    with _child("faiss", path, limits or LoaderLimits(), kind) as (result, _out):
        return int(result["ntotal"])


@contextlib.contextmanager
def _child(fmt: str, path: Path, limits: LoaderLimits, *extra: str
           ) -> Iterator[tuple[dict[str, Any], Path]]:
    """Run the loading child; its result and the folder of the arrays it wrote."""
    with tempfile.TemporaryDirectory(prefix="cadml-load-") as tmp:
        out = Path(tmp)
        args = [sys.executable, "-I", "-c", _BOOT, json.dumps(sys.path), fmt, str(path),
                str(out), str(limits.max_inflated_bytes), *extra]
        try:
            proc = subprocess.run(args, env={**CHILD_ENV, "OPENBLAS_NUM_THREADS": "1"},
                                  close_fds=True, capture_output=True, check=False,
                                  preexec_fn=lambda: _limit(limits),
                                  timeout=limits.cpu_seconds * 2 + 30)
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"loading {path.name} took longer than allowed",
                                code="artifact_time_limit",
                                context={"cpuSeconds": limits.cpu_seconds}) from None
        yield _result(out, proc, limits), out


def _limit(limits: LoaderLimits) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    cpu = int(limits.cpu_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _result(out: Path, proc: subprocess.CompletedProcess[bytes], limits: LoaderLimits
            ) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads((out / "result.json").read_text("utf-8"))
    except (OSError, ValueError):
        if proc.returncode < 0:  # killed: SIGXCPU/SIGKILL from RLIMIT_CPU, or the OOM killer
            raise ArtifactError(f"the artifact loader was stopped by signal {-proc.returncode} "
                             f"(CPU limit {limits.cpu_seconds} s, memory limit "
                             f"{limits.memory_bytes} bytes)", code="artifact_time_limit",
                             context={"signal": -proc.returncode}) from None
        raise ArtifactError(f"the artifact loader failed (exit {proc.returncode})",
                         code="artifact_load_failed",
                         context={"exit": proc.returncode}) from None
    error = result.get("error")
    if error is None:
        return result
    if error.get("unsafe"):
        exc = UnsafeArtifact(error["message"], code=error["code"], context=error["context"])
        exc.report = _report(result.get("report"))
        raise exc
    raise ArtifactError(error["message"], code=error["code"], context=error["context"])


def _report(data: dict[str, Any] | None) -> ScanReport | None:
    if data is None:
        return None
    return ScanReport(data["mode"], data["bytes"], Counter(data["opcodes"]), data["globals"],
                      data["refused"])


# ------------------------------------------------------------------ in the child

_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from controller.search.loader import child_main; child_main(sys.argv[2:])")


def child_main(argv: list[str]) -> None:
    fmt, path, out, max_inflated, *extra = argv
    result: dict[str, Any] = {}
    try:
        if fmt == "faiss":
            from controller.search.index import read_faiss

            result["ntotal"] = read_faiss(path, extra[0]).ntotal
            (Path(out) / "result.json").write_text(json.dumps(result), "utf-8")
            return
        mode, max_bytes = extra
        ids, vectors, report = _load(Path(path), fmt, mode, int(max_bytes), int(max_inflated))
        np.save(Path(out) / "vectors.npy", vectors, allow_pickle=False)
        np.save(Path(out) / "ids.npy", np.array(ids, dtype=str), allow_pickle=False)
        result["report"] = report.as_dict() if report else None
    except UnsafeArtifact as exc:
        result = {"error": {**exc.as_json(), "message": str(exc), "unsafe": True},
                  "report": exc.report.as_dict() if exc.report else None}
    except ArtifactError as exc:
        result = {"error": {**exc.as_json(), "message": str(exc)}}
    except MemoryError:
        result = {"error": {"code": "artifact_memory_limit", "context": {},
                            "message": "loading the artifact needed more memory than "
                                       "the loader's limit"}}
    except Exception as exc:  # anything else a hostile artifact provokes: its type and text
        kind = type(exc).__name__
        result = {"error": {"code": "artifact_load_failed", "context": {"type": kind},
                            "message": f"{kind}: {exc}"[:500]}}
    (Path(out) / "result.json").write_text(json.dumps(result), "utf-8")


def _load(path: Path, fmt: str, mode: str, max_bytes: int, max_inflated: int
          ) -> tuple[list[str], np.ndarray, ScanReport | None]:
    if fmt == "pickle":
        size = path.stat().st_size  # before reading: a 4 GiB pickle is never read
        if size > max_bytes:
            raise UnsafeArtifact(f"pickle is {size} bytes, over the scan limit {max_bytes}",
                                 code="pickle_too_large", context={"bytes": size})
        obj, report = safe_load(path.read_bytes(), mode, max_bytes)
        if not isinstance(obj, dict) or "vectors" not in obj or "ids" not in obj:
            raise ArtifactError("pickle artifact must hold a dict with 'vectors' and 'ids'",
                             code="artifact_corrupt")
        if not isinstance(obj["ids"], list | tuple):  # not a range(10**10) to iterate
            raise ArtifactError("pickle artifact 'ids' must be a list", code="artifact_corrupt")
        return [str(i) for i in obj["ids"]], np.asarray(obj["vectors"], np.float32), report
    inflated = _npz_size(path)
    if inflated > max_inflated:
        raise ArtifactError(f"npz arrays inflate to {inflated} bytes, over the limit of "
                         f"{max_inflated}", code="artifact_too_large",
                         context={"bytes": inflated, "limit": max_inflated})
    try:
        with np.load(path, allow_pickle=False) as data:
            return [str(i) for i in data["ids"]], np.asarray(data["vectors"], np.float32), None
    except (ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"npz artifact {path.name}: {exc}", code="artifact_corrupt") from None


def _npz_size(path: Path) -> int:
    """The declared uncompressed size of an npz's members (the zip directory, no inflating)."""
    try:
        with zipfile.ZipFile(path) as z:
            return sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"npz artifact {path.name}: {exc}", code="artifact_corrupt") from None
