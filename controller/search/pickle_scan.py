"""Scanning pickles opcode by opcode before anything is unpickled, and loading them restricted.

Fail closed (DESIGN §9): a stream that does not parse, has bytes after STOP, is
over the size cap, uses persistent ids or the extension registry, or loads a
global outside the allowlist is refused with a structured error. Global names
given by STACK_GLOBAL must come straight from string constants or memo entries;
anything cleverer is refused as obfuscated. Loading then uses an Unpickler whose
find_class enforces the very same allowlist, so a scanner gap is not a loader gap.

One policy, which cannot run code: the allowlist holds exact (module, name)
pairs; a dotted attribute path (`pdb` + `os.system`) is not one of them, and
Python 2 names are not mapped (`fix_imports=False`: `cPickle.loads` stays
`cPickle.loads`, refused). Modes: `whitelist`, and `audit` = the same allowlist
plus the opcode census, taken from the walk before anything is loaded and kept
for refusals too (`UnsafeArtifact.report`). `blacklist` is gone: a deny-list of
an open set of callables always missed one.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from controller.errors import StructuredError

MODES = ("whitelist", "audit")
REMOVED_MODES = {"blacklist": "use 'whitelist' (or 'audit' = whitelist + opcode census); the "
                              "blacklist mode ran attacker code and was removed"}
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "range"),
    ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
})
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}
_MEMO_PUT = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}
_MEMO_GET = {"BINGET", "LONG_BINGET", "GET"}


class UnsafeArtifact(StructuredError):
    """An artifact was refused before it could run anything."""

    reason = "UnsafeArtifact"
    exit_code = 1

    def __init__(self, message: str, *, code: str = "unsafe_pickle",
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, stage="artifact", context=context)
        self.report: ScanReport | None = None  # the opcode census up to the refusal


@dataclass
class ScanReport:
    mode: str
    size: int
    opcodes: Counter[str] = field(default_factory=Counter)
    globals: list[str] = field(default_factory=list)
    refused: str | None = None  # the refusal's code, when the artifact was refused

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "bytes": self.size, "opcodes": dict(self.opcodes),
                "globals": self.globals, "refused": self.refused}


def check_mode(mode: str) -> str:
    """The mode itself, or a structured error naming what to use instead."""
    if mode in MODES:
        return mode
    hint = REMOVED_MODES.get(mode, f"use one of {', '.join(MODES)}")
    raise UnsafeArtifact(f"pickle mode {mode!r} is not supported: {hint}", code="scan_mode",
                         context={"mode": mode, "modes": list(MODES)})


def _forbidden(module: str, name: str) -> str | None:
    """Pure: why (module, name) may not be loaded, or None. Exact pairs only."""
    return None if (module, name) in ALLOWED else "not in the allowlist"


def scan(data: bytes, mode: str = "whitelist",
         max_bytes: int = DEFAULT_MAX_BYTES) -> ScanReport:
    """Walk every opcode; raise UnsafeArtifact (carrying the census so far) on anything
    not allowed."""
    report = ScanReport(check_mode(mode), len(data))
    try:
        return _walk(data, report, max_bytes)
    except UnsafeArtifact as exc:
        exc.report = report
        report.refused = exc.code
        raise


def _walk(data: bytes, report: ScanReport, max_bytes: int) -> ScanReport:
    if len(data) > max_bytes:
        raise UnsafeArtifact(f"pickle is {len(data)} bytes, over the scan limit {max_bytes}",
                             code="pickle_too_large", context={"bytes": len(data)})
    recent: list[Any] = []  # values pushed by string/memo ops, None for anything else
    memo: dict[int, Any] = {}
    last_pos, end = -1, 0
    try:
        for op, arg, maybe_pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            pos = int(maybe_pos or 0)
            report.opcodes[name] += 1
            last_pos = pos
            if name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name in _MEMO_PUT:
                slot = len(memo) if name == "MEMOIZE" else int(arg or 0)
                memo[slot] = recent[-1] if recent else None
            elif name in _MEMO_GET:
                recent.append(memo.get(int(arg or 0)))
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                _check(report, module, attr)
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                    raise UnsafeArtifact("STACK_GLOBAL with names that are not plain string "
                                         "constants (obfuscated import)", code="obfuscated_global")
                _check(report, recent[-2], recent[-1])
                recent.append(None)
            elif name == "STOP":
                end = pos + 1
            elif name in ("PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"):
                raise UnsafeArtifact(f"opcode {name} is not allowed", code="denied_opcode",
                                     context={"opcode": name, "position": pos})
            else:
                recent.append(None)
    except UnsafeArtifact:
        raise
    except Exception as exc:  # a stream we cannot parse is refused
        raise UnsafeArtifact(f"not a well-formed pickle: {exc}", code="malformed_pickle",
                             context={"position": last_pos}) from None
    if end != len(data):
        raise UnsafeArtifact(f"{len(data) - end} bytes after the STOP opcode (a scanner "
                             "bypass trick); refused", code="trailing_bytes",
                             context={"stop": end, "bytes": len(data)})
    return report


def _check(report: ScanReport, module: str, name: str) -> None:
    report.globals.append(f"{module}.{name}")
    why = _forbidden(module, name)
    if why:
        raise UnsafeArtifact(f"pickle imports {module}.{name}: {why}", code="denied_global",
                             context={"global": f"{module}.{name}", "mode": report.mode})


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        # fix_imports=False: no Python 2 name is mapped to a Python 3 callable behind
        # find_class's back (cPickle.loads -> pickle.loads, StringIO.open -> io.open)
        super().__init__(io.BytesIO(data), fix_imports=False)

    def find_class(self, module: str, name: str) -> Any:
        why = _forbidden(module, name)
        if why:
            raise UnsafeArtifact(f"refused to load {module}.{name}: {why}", code="denied_global")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeArtifact("persistent ids are not allowed", code="denied_opcode")


def safe_load(data: bytes, mode: str = "whitelist",
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, ScanReport]:
    """Scan, then unpickle with the same restrictions enforced by the loader."""
    report = scan(data, mode, max_bytes)
    return _Restricted(data).load(), report
