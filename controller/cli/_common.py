"""Helpers shared by the commands: time parsing, help layout, output of findings.

Kept light: the command modules import it to build the parser, which every command
(`cadml --version` included) pays for, so heavy imports belong inside handlers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from controller.errors import UsageError
from controller.yamlio import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from controller.findings import FieldError

TIME_HELP = "now, ISO 8601 (2026-11-22T12:00Z) or relative to now (-2h, -7d, -30m)"
# options taking a TIME: `--at -2h` is a value, not a flag
TIME_FLAGS = ("--now", "--at", "--since", "--until")
_SPAN = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"^-\d+[smhdw]$")


def parse_span(text: str, flag: str) -> timedelta:
    """`15m`, `2h`, `7d`, `1w` → a duration; anything else is a usage error naming `flag`."""
    match = _SPAN.match(text.strip())
    if not match:
        raise UsageError(f"{flag} {text!r}: use a number and s, m, h, d or w (e.g. 15m, 1h, "
                         "7d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_time(text: str | None, flag: str = "--now",
               now: datetime | None = None) -> datetime:
    """The one parser of every TIME the command line takes: `now` (or nothing), an ISO 8601
    time (UTC unless it says otherwise) or a span before now (`-2h`, `-7d`)."""
    now = now or datetime.now(UTC)
    if text is None or text.strip().lower() == "now":
        return now
    if text.strip().startswith("-"):
        return now - parse_span(text.strip()[1:], flag)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: not a time; use {TIME_HELP}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def join_time_values(argv: list[str]) -> list[str]:
    """`--at -2h` → `--at=-2h`: argparse would read a value starting with '-' as a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in TIME_FLAGS and i + 1 < len(argv) and _RELATIVE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's help ends with its default,
    unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        if shown and action.option_strings and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


def add_parser(sub: Any, name: str, *, help: str, description: str,
               examples: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line help, its description and an examples epilog."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()))
    return p


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                   help="refuse files larger than N bytes")
    p.add_argument("--now", metavar="TIME",
                   help=f"judge validity windows at this time: {TIME_HELP} (default: now)")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _in_range(text: str, kind: type[int] | type[float], ok: Callable[[float], bool],
              what: str) -> Any:
    """argparse type helper: `text` as `kind`, refused unless `ok` holds."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    return float(_in_range(text, float, lambda v: 0 < v < float("inf"),
                           "a number of seconds above 0"))


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    return int(_in_range(text, int, lambda v: 0 <= v <= 65535, "a port (0 to 65535)"))


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
