"""`cadml validate`: the offline verdict of files, folders, stdin or a Git ref."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from controller.cli._common import (
    add_input_options,
    add_parser,
    github_line,
    parse_time,
    write_json,
)

if TYPE_CHECKING:
    from controller.validation import ValidationReport

HELP = """\
Validate cadml resources the way the API server and the operator will: schema,
CEL rules, and the cross-object rules (one STABLE per model, references resolve,
policies route only to CANARY/STABLE versions, release gates, …).

Folders are searched for *.yaml / *.yml; a .cadmlignore (gitignore syntax)
excludes paths. Documents of other API groups (apps/v1 Deployments, …) are
skipped. With --git-ref the tree is read from Git, no checkout needed.

exit codes: 0 valid · 1 invalid · 2 usage or I/O error
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "validate", help="validate resource YAML offline", description=HELP,
                   examples="cadml validate examples/\n"
                            "cadml validate --git-ref origin/main -o github\n"
                            "kubectl get rolloutpolicies -A -o yaml | cadml validate -")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files or folders ('-' reads stdin); with --git-ref, path prefixes "
                        "inside the tree (default: everything)")
    p.add_argument("--git-ref", metavar="REF", help="validate the tree at this Git ref")
    p.add_argument("--repo", default=".", metavar="DIR", help="Git repository")
    p.add_argument("--output", "-o", choices=("text", "json", "github"), default="text",
                   help="output format (github: annotations on the pull request's files)")
    p.add_argument("--warnings-as-errors", action="store_true",
                   help="exit 1 on warnings too (expired policies, ended overrides)")
    add_input_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from controller.sources import collect_git, collect_paths
    from controller.validation import validate_files

    now = parse_time(args.now)
    if args.git_ref:
        files, read_errors = collect_git(args.repo, args.git_ref, args.paths, args.max_bytes)
    else:
        files, read_errors = collect_paths(args.paths or ["."], args.max_bytes)
    report = validate_files(files, now)
    report.findings[:0] = read_errors
    report.files += len(read_errors)
    emit(report, args.output)
    failing = report.findings if args.warnings_as_errors else report.errors
    return 1 if failing else 0


def emit(report: ValidationReport, output: str) -> None:
    errors = len(report.errors)
    warnings = len(report.findings) - errors
    if output == "json":
        write_json({
            "valid": errors == 0,
            "files": report.files,
            "documents": report.documents,
            "resources": report.resources,
            "skippedForeignDocuments": report.foreign,
            "errors": errors,
            "warnings": warnings,
            "findings": [f.as_dict() for f in report.findings],
        })
        return
    for f in report.findings:
        print(github_line(f) if output == "github" else f.render())
    verdict = "valid" if errors == 0 else "INVALID"
    summary = (f"{verdict}: {report.resources} resources in {report.files} files, "
               f"{errors} errors, {warnings} warnings")
    if report.foreign:
        summary += (f" ({report.foreign} documents of other API groups or not Kubernetes "
                    "objects skipped)")
    print(summary, file=sys.stderr if output == "github" else sys.stdout)
