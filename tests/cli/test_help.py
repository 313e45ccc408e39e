"""`cadml --help` is complete: every command has a description and examples, every option
a help line that states its default; and the command line starts fast, without the
heavy libraries of the commands that are not run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from controller.cli import build_parser
from tests.conftest import ROOT


def _commands(parser: argparse.ArgumentParser, prefix: str = "cadml"
              ) -> list[tuple[str, argparse.ArgumentParser, bool]]:
    """(name, parser, is_leaf) of every command and command group, depth first."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                out.append((f"{prefix} {name}", sub, not nested))
                out.extend(nested)
    return out


COMMANDS = _commands(build_parser())


def test_every_command_is_listed() -> None:
    leaves = {name for name, _, leaf in COMMANDS if leaf}
    assert {"cadml validate", "cadml diff", "cadml reconcile", "cadml status", "cadml run",
            "cadml worker", "cadml index build", "cadml evaluate", "cadml compare",
            "cadml schedule-tick", "cadml rollback", "cadml promote", "cadml gen",
            "cadml db upgrade", "cadml db current", "cadml audit verify",
            "cadml history"} <= leaves


@pytest.mark.parametrize(("name", "parser", "leaf"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_has_a_description_and_examples(
        name: str, parser: argparse.ArgumentParser, leaf: bool) -> None:
    assert (parser.description or "").strip(), f"{name} has no description"
    if leaf:
        assert "examples:\n  cadml " in (parser.epilog or ""), f"{name} has no examples"


@pytest.mark.parametrize(("name", "parser", "leaf"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_option_has_help_stating_its_default(
        name: str, parser: argparse.ArgumentParser, leaf: bool) -> None:
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert (action.help or "").strip(), f"{name} {flag} has no help"
        if action.option_strings and action.default not in (None, False, []):
            rendered = parser._get_formatter()._expand_help(action)  # as --help prints it
            assert "default" in rendered.lower(), f"{name} {flag}: default not shown"
    assert "%(default)" not in text


def test_worker_help_documents_endpoints_and_limits() -> None:
    text = {n: p for n, p, _ in COMMANDS}["cadml worker"].format_help()
    for needed in ("/v1/search?jobId=", "topK: 1..100", "/v1/jobs/JOB/binding", "/readyz",
                   "(default: 8080)", "(default 127.0.0.1", "cadml[worker]"):
        assert needed in text, needed
    rollback = {n: p for n, p, _ in COMMANDS}["cadml rollback"].format_help()
    assert "required with --cluster" in rollback


def test_the_cli_starts_without_heavy_libraries() -> None:
    """Building the parser (every command pays it) and validating one file import none of
    the libraries that only the worker, the operator or the store need."""
    probe = ("import sys, json, contextlib, io\n"
             "from controller.cli import build_parser, main\n"
             "build_parser()\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    main(['validate', {str(ROOT / 'examples' / 'tenants')!r}])\n"
             "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    heavy = {"faiss", "ezdxf", "kopf", "kubernetes", "aiohttp", "sqlalchemy", "alembic",
             "numpy", "psycopg"}
    assert loaded & heavy == set()
