"""`cadml gen`: write (or with --check, verify) the generated schemas and CRDs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.cli._common import add_parser
from controller.errors import UsageError

HELP = """\
Generate schemas/*.schema.json, crds/*.yaml and charts/cadml/crds/*.yaml from the
typed resource models (controller/api/v1alpha1.py), the schema's single source
of truth. With --check, write nothing and exit 1 if any file differs.
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "gen", help="generate JSON Schemas and CRDs from the resource models",
                   description=HELP, examples="cadml gen\ncadml gen --check   # in CI")
    p.add_argument("--check", action="store_true", help="fail on drift instead of writing")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="repository root (default: the folder holding pyproject.toml, "
                        "searched upwards from the current folder)")
    p.set_defaults(handler=run)


def is_checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "controller").is_dir()


def _root(given: str | None) -> Path:
    """The cadml checkout to generate into; outside one there is nothing to check."""
    if given:
        if not is_checkout(Path(given)):
            raise UsageError(f"--root {given}: not a cadml checkout (no pyproject.toml and "
                             "controller/ there)")
        return Path(given)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    raise UsageError(f"{here} is not inside a cadml checkout (no pyproject.toml with "
                     "controller/ here or above): run it in the repository, or pass --root DIR")


def run(args: argparse.Namespace) -> int:
    from controller.schemagen import check_all, write_all

    root = _root(args.root)
    if args.check:
        drift = check_all(root)
        for rel in drift:
            print(f"drift: {rel} differs from `cadml gen` output")
        if drift:
            print("run `cadml gen` and commit the result")
            return 1
        print("generated files are up to date")
        return 0
    changed = write_all(root)
    for rel in changed:
        print(f"wrote {rel}")
    print(f"{len(changed)} files changed" if changed else "generated files are up to date")
    return 0
