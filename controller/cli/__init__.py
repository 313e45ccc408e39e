"""The `cadml` command line: argument parsing and dispatch; each command lives in its own module.

Exit codes (stable, documented in the README):
    0  success: valid, nothing to refuse
    1  the input breaks rules, the change must not merge, or generated files drifted
    2  usage error, or a file, folder, Git ref or store could not be read
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller import __version__
from controller.errors import CadmlError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

_EPILOG = """\
exit codes: 0 success · 1 invalid input / must not merge / drift · 2 usage or I/O error
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
        store_cmds,
        validate,
        worker_cmd,
    )

    parser = _Parser(
        prog="cadml",
        description="GitOps controller for the AI models behind CAD similarity search.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cadml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (validate, diff, reconcile, operator_cmd, worker_cmd, index_cmd,
                   governance_cmds, gen, store_cmds, lookup_cmds):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CadmlError as exc:
        sys.stderr.write(f"cadml {args.command}: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return code
