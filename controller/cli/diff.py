"""`cadml diff`: what a pull request changes in routing, thresholds, stages and review."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from controller.cli._common import add_input_options, add_parser, parse_time, write_json
from controller.errors import SourceError

if TYPE_CHECKING:
    from controller.diff import ChangeReport
    from controller.sources import SourceFile
    from controller.validation import ValidationReport

HELP = """\
Compare the resources at --base (a Git ref) with --head (a Git ref; default: the
working tree of --repo) and explain the change in meaning: traffic per version
before → after, stage moves, effective thresholds and their source, release
records added, and a red verdict when a rule breaks, a ReleaseRecord is edited
or deleted, or human review is weakened. Markdown output is ready to post as a
pull-request comment.

exit codes: 0 safe to merge · 1 must not merge · 2 usage or I/O error
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "diff", help="explain a change to routing and review safety",
                   description=HELP,
                   examples="cadml diff --base origin/main\n"
                            "cadml diff --base origin/main --head HEAD tenants/acme-cad -o json")
    p.add_argument("--base", required=True, metavar="REF", help="Git ref before the change")
    p.add_argument("--head", metavar="REF", help="Git ref after the change (default: work tree)")
    p.add_argument("--repo", default=".", metavar="DIR", help="Git repository")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="limit to these folders inside the repository (default: all)")
    p.add_argument("--output", "-o", choices=("markdown", "json"), default="markdown",
                   help="output format (markdown: ready for a pull-request comment)")
    add_input_options(p)
    p.set_defaults(handler=run)


def _read(args: argparse.Namespace, ref: str | None) -> list[SourceFile]:
    from controller.sources import collect_git, collect_paths

    if ref is None:
        from pathlib import Path
        root = Path(args.repo)
        if not root.is_dir():
            raise SourceError(f"{args.repo}: no such folder")
        files, errors = collect_paths([str(root / p) for p in args.paths] or [str(root)],
                                      args.max_bytes)
    else:
        files, errors = collect_git(args.repo, ref, args.paths, args.max_bytes)
    if errors:
        raise SourceError("; ".join(e.render() for e in errors))
    return files


def compute(args: argparse.Namespace) -> tuple[ChangeReport, ValidationReport]:
    from controller.diff import diff_bundles
    from controller.validation import validate_files

    now = parse_time(args.now)
    base = validate_files(_read(args, args.base), now)
    head = validate_files(_read(args, args.head), now)
    return diff_bundles(base.bundle, head.bundle, now, head.findings), head


def run(args: argparse.Namespace) -> int:
    report, _ = compute(args)
    if args.output == "json":
        write_json({
            "mustNotMerge": report.must_not_merge,
            "blockers": report.blockers,
            "models": [
                {"tenant": m.tenant, "model": m.model, "status": m.status,
                 "routingBefore": m.routing_before, "routingAfter": m.routing_after,
                 "routingSourceBefore": m.routing_source_before,
                 "routingSourceAfter": m.routing_source_after,
                 "gaining": m.gaining, "losing": m.losing,
                 "stageChanges": [{"version": v, "before": b, "after": a}
                                  for v, b, a in m.stage_changes],
                 "servingChanges": [{"version": v, "change": what}
                                    for v, what in m.serving_changes],
                 "stepsChange": m.steps_change,
                 "shadowChange": m.shadow_change,
                 "thresholds": [{"version": v, "name": n,
                                 "before": None if b is None else {"value": b.value,
                                                                   "source": b.source},
                                 "after": None if a is None else {"value": a.value,
                                                                  "source": a.source}}
                                for (v, n), (b, a) in m.thresholds.items()]}
                for m in report.models
            ],
            "releasesAdded": report.releases_added,
            "releasesRemoved": report.releases_removed,
            "problems": [f.as_dict() for f in report.problems],
        })
    else:
        from controller.diff import render_markdown

        print(render_markdown(report, args.base, args.head or "working tree"))
    return 1 if report.must_not_merge else 0
