"""The `cadml` command line: argument parsing and dispatch; each command lives in its own module.

Exit codes (stable, documented in the README and in `cadml --help`):
    0    success: valid, nothing to refuse
    1    the input breaks rules, the change must not merge, or generated files drifted
    2    usage error, or a file, folder, Git ref, store, cluster or extra is missing or unreadable
    3    internal error (a bug): the one-line message says so; --debug shows the traceback
    130  interrupted (Ctrl-C)
    141  stdout closed by its reader (`cadml … | head`); nothing is printed

Every failure is reported here, once, as one line on stderr (`failures.explain`); commands
raise and never print their own errors. Command modules import only argparse at the top:
building the parser must stay cheap (`cadml --version`, `cadml validate`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from controller import __version__

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

_EPILOG = """\
exit codes: 0 success · 1 invalid input / must not merge / drift · 2 usage, I/O, store,
cluster or missing-extra error · 3 internal error (a bug) · 130 interrupted · 141 output
pipe closed
--debug (anywhere on the line) or CADML_DEBUG=1 prints the traceback of a failure.
docs: README.md (commands, rule ids, GitOps workflow)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from controller.cli import (
        diff,
        gen,
        governance_cmds,
        index_cmd,
        lookup_cmds,
        operator_cmd,
        reconcile,
        rollout_cmd,
        store_cmds,
        validate,
        worker_cmd,
    )
    from controller.cli._common import HelpFormatter

    parser = _Parser(
        prog="cadml",
        description="GitOps controller for the AI models behind CAD similarity search.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cadml {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (also CADML_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (validate, diff, reconcile, operator_cmd, worker_cmd, index_cmd,
                   governance_cmds, rollout_cmd, gen, store_cmds, lookup_cmds):
        module.register(sub)
    return parser


def _quiet_stdout() -> None:
    """The reader of stdout is gone: later writes (and the flush at exit) go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _flushed(code: int) -> int:
    """`code`, once stdout is written out; 141 (quietly) if its reader has gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    return code


def _command_name(args: argparse.Namespace) -> str:
    action = next((getattr(args, a) for a in ("index_command", "db_command", "audit_command")
                   if getattr(args, a, None)), None)
    return f"{args.command} {action}" if action else str(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in == ["--version"]:  # answered before any command module is imported
        print(f"cadml {__version__}")
        return EXIT_OK
    from controller.cli._common import join_time_values

    debug = "--debug" in args_in or os.environ.get("CADML_DEBUG", "") not in ("", "0")
    args_in = [a for a in args_in if a != "--debug"]
    try:
        args = build_parser().parse_args(join_time_values(args_in))
    except SystemExit as done:  # --help, or a usage error argparse reported
        raise SystemExit(_flushed(done.code if isinstance(done.code, int) else EXIT_USAGE)
                         ) from None
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:
        from controller.cli.failures import explain

        if debug:
            import traceback

            traceback.print_exc()
        message, code = explain(exc)
        sys.stderr.write(f"cadml {_command_name(args)}: {message}\n")
    return code
