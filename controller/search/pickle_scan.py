"""Scanning pickles opcode by opcode before anything is unpickled, and loading them restricted.

Fail closed (DESIGN §9): a stream that does not parse, has bytes after STOP, is
over the size cap, uses persistent ids or the extension registry, or loads a
global the mode forbids is refused with a structured error. Global names given
by STACK_GLOBAL must come straight from string constants or memo entries;
anything cleverer is refused as obfuscated. Loading then uses an Unpickler whose
find_class enforces the same rules, so a scanner gap is not a loader gap.

Modes: `whitelist` (only ALLOWED globals), `blacklist` (refuse DENIED globals),
`audit` (as blacklist, and the opcode census is returned for the audit trail).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from controller.errors import StructuredError

MODES = ("whitelist", "blacklist", "audit")
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
DENIED_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "ctypes", "multiprocessing", "code", "codeop", "pickle", "_pickle", "marshal", "types",
    "webbrowser", "asyncio", "threading", "signal", "tempfile", "pathlib", "io", "_io",
    "commands", "popen2", "platform", "urllib", "http", "ftplib", "smtplib", "requests",
})
DENIED_BUILTINS: frozenset[str] = frozenset({
    "eval", "exec", "compile", "__import__", "open", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "input", "breakpoint", "help", "exit", "quit", "memoryview",
    "__builtins__", "super", "type", "object", "classmethod", "staticmethod", "property",
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


@dataclass
class ScanReport:
    mode: str
    size: int
    opcodes: Counter[str] = field(default_factory=Counter)
    globals: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "bytes": self.size, "opcodes": dict(self.opcodes),
                "globals": self.globals}


def _forbidden(module: str, name: str, mode: str) -> str | None:
    if mode == "whitelist":
        return None if (module, name) in ALLOWED else "not in the allowlist"
    root = module.split(".", 1)[0]
    if root in DENIED_MODULES:
        return f"module {root!r} is denied"
    if root in ("builtins", "__builtin__") and name in DENIED_BUILTINS:
        return f"builtin {name!r} is denied"
    if "__" in name and (module, name) not in ALLOWED:
        return "dunder names are denied"
    return None


def scan(data: bytes, mode: str = "whitelist",
         max_bytes: int = DEFAULT_MAX_BYTES) -> ScanReport:
    """Walk every opcode; raise UnsafeArtifact on anything not allowed."""
    if mode not in MODES:
        raise UnsafeArtifact(f"unknown pickle scan mode {mode!r}", code="scan_mode")
    if len(data) > max_bytes:
        raise UnsafeArtifact(f"pickle is {len(data)} bytes, over the scan limit {max_bytes}",
                             code="pickle_too_large", context={"bytes": len(data)})
    report = ScanReport(mode, len(data))
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
                _check(report, module, attr, mode)
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                    raise UnsafeArtifact("STACK_GLOBAL with names that are not plain string "
                                         "constants (obfuscated import)", code="obfuscated_global")
                _check(report, recent[-2], recent[-1], mode)
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


def _check(report: ScanReport, module: str, name: str, mode: str) -> None:
    report.globals.append(f"{module}.{name}")
    why = _forbidden(module, name, mode)
    if why:
        raise UnsafeArtifact(f"pickle imports {module}.{name}: {why}", code="denied_global",
                             context={"global": f"{module}.{name}", "mode": mode})


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes, mode: str) -> None:
        super().__init__(io.BytesIO(data))
        self.mode = mode

    def find_class(self, module: str, name: str) -> Any:
        why = _forbidden(module, name, self.mode)
        if why:
            raise UnsafeArtifact(f"refused to load {module}.{name}: {why}", code="denied_global")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeArtifact("persistent ids are not allowed", code="denied_opcode")


def safe_load(data: bytes, mode: str = "whitelist",
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, ScanReport]:
    """Scan, then unpickle with the same restrictions enforced by the loader."""
    report = scan(data, mode, max_bytes)
    return _Restricted(data, mode).load(), report
