"""Helpers shared by the commands: time parsing, output of findings."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from controller.errors import UsageError
from controller.findings import FieldError
from controller.yamlio import DEFAULT_MAX_BYTES


def parse_time(text: str | None, option: str = "--now") -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: not an ISO 8601 time") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                   help=f"refuse files larger than N bytes (default {DEFAULT_MAX_BYTES})")
    p.add_argument("--now", metavar="TIME",
                   help="judge validity windows at this ISO 8601 time (default: now)")


def write_json(data: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    json.dump(data, out, indent=2, ensure_ascii=False, default=str)
    out.write("\n")


def github_line(f: FieldError) -> str:
    """A GitHub Actions workflow command that annotates the file in the PR."""
    level = "error" if f.severity == "error" else "warning"
    props = [f"file={_esc_prop(f.file.split(':', 1)[-1])}"] if f.file else []
    if f.line is not None:
        props.append(f"line={f.line}")
    props.append(f"title={_esc_prop(f.rule)}")
    msg = f"{f.obj.render()}: {f.path or '(root)'}: {f.message}"
    return f"::{level} {','.join(props)}::{_esc_data(msg)}"


def _esc_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _esc_prop(s: str) -> str:
    return _esc_data(s).replace(":", "%3A").replace(",", "%2C")
