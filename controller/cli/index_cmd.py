"""`cadml index build`: build a similarity-index artifact from a folder of DXF drawings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.cli._common import add_parser, positive_int, write_json
from controller.cli.shard_cmd import SHARD_HELP, register_merge

HELP = """\
Extract features from every .dxf below DIR (in sandboxed processes with CPU and
memory limits), build a faiss index (exact `flat`, or approximate `hnsw` for large
corpora) and write OUT/index.faiss, OUT/vectors.npy and OUT/manifest.json. Point a
ModelVersion at the manifest:

  artifact: {uri: file:///…/OUT/manifest.json, sha256: <printed below>, format: faiss-index}

Unreadable drawings are skipped and listed in the manifest with their reason. The
manifest records `extractorVersion`: the feature code's version, a hash of
controller/features/extract.py and the ezdxf version.

Incremental builds: feature vectors are cached by (sha256 of the drawing,
feature version, extractorVersion) under --cache (default
$XDG_CACHE_HOME/cadml/features, else ~/.cache/cadml/features), so a rebuild
parses only new or changed drawings; removed ones drop out. An entry is reused
only when the CPU time its parse took is below --cpu-seconds. The artifact is
byte for byte the one a build without the cache writes. Each vector is cached as soon
as it is computed, so running the same command again after an interruption
(--resume says so explicitly) continues where the build stopped.

Drawings stream: the parser processes read them themselves, largest first, a few
at a time, so memory does not grow with the corpus. Prune the cache with
`cadml index cache prune --older-than 30d`.

Progress (drawings/s and ETA) goes to stderr; stdout carries only the result.
Needs the 'worker' extra: pip install 'cadml[worker]'.
exit codes: 0 built · 1 nothing could be indexed · 2 usage or I/O error (OUT is a
file or cannot be created: checked before any drawing is read)
"""

PRUNE_HELP = """\
Remove feature-cache entries that no build has used or written for --older-than
(every build marks the entries it uses). Entries of an older extractorVersion are
never used again and go once they are that old. Only files named as cache entries
are removed, and folders they leave empty.
exit codes: 0 pruned (or nothing to prune) · 2 usage error or no such cache folder
"""

PRUNE_EXAMPLES = """\
cadml index cache prune --older-than 30d
cadml index cache prune --older-than 7d --cache /var/cache/cadml --dry-run -o json
"""

EXAMPLES = """\
cadml index build drawings/ --out artifacts/parts-v4
cadml index build drawings/ --out artifacts/parts-hnsw --kind hnsw --workers 8 -o json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="build similarity-index artifacts",
                       description="Similarity-index artifacts for ModelVersions.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = add_parser(isub, "build", help="index a folder of DXF drawings", description=HELP,
                   examples=EXAMPLES)
    b.add_argument("source", metavar="DIR", help="folder searched for *.dxf drawings")
    b.add_argument("--out", required=True, metavar="OUT",
                   help="folder to write the artifact into (created; files in it replaced)")
    b.add_argument("--feature-version", default="v4", choices=("v1", "v2", "v3", "v4"),
                   help="feature extractor version; the ModelVersion's featureVersion")
    b.add_argument("--kind", default="flat", choices=("flat", "hnsw"),
                   help="faiss index: flat (exact) or hnsw (approximate, large corpora)")
    b.add_argument("--workers", type=positive_int, default=2, metavar="N",
                   help="sandboxed extraction processes in parallel")
    b.add_argument("--cpu-seconds", type=float, default=10.0, metavar="S",
                   help="CPU time allowed per drawing")
    b.add_argument("--cache", metavar="DIR",
                   help="feature cache folder (default $XDG_CACHE_HOME/cadml/features or "
                        "~/.cache/cadml/features)")
    b.add_argument("--no-cache", action="store_true",
                   help="parse every drawing; read and write no cache")
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted build from the cache (any cached build "
                        "does; this refuses to run without the cache)")
    b.add_argument("--shard", metavar="I/N", help=SHARD_HELP)
    b.add_argument("--attempt", type=positive_int, default=1, metavar="K",
                   help="with --shard: this is attempt K (from 1) of the shard (a retried "
                        "pod's); a failure marker says whether a retry will follow")
    b.add_argument("--attempts", type=positive_int, default=1, metavar="M",
                   help="with --shard: the attempts a shard gets in all (the Job's "
                        "backoffLimitPerIndex + 1); a failed attempt M is final")
    b.add_argument("--record-failure", type=positive_int, metavar="CODE",
                   help="with --shard: build nothing; write the failure marker of this "
                        "attempt for a build process that ended with exit code CODE without "
                        "writing one (killed: out of memory, say), and exit with CODE")
    b.add_argument("--quiet", action="store_true", help="no per-file progress on stderr")
    b.add_argument("--output", "-o", choices=("text", "json"), default="text",
                   help="output format")
    b.set_defaults(handler=run)
    register_merge(isub)

    c = isub.add_parser("cache", help="the feature cache of incremental builds",
                        description="The feature cache that `index build` keeps.")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    pr = add_parser(csub, "prune", help="remove cache entries no build used lately",
                    description=PRUNE_HELP, examples=PRUNE_EXAMPLES)
    pr.add_argument("--older-than", required=True, metavar="SPAN",
                    help="remove entries no build used or wrote for this long (15m, 2h, 30d)")
    pr.add_argument("--cache", metavar="DIR", help="the cache folder (default: as index build)")
    pr.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    pr.add_argument("--output", "-o", choices=("text", "json"), default="text",
                    help="output format")
    pr.set_defaults(handler=run_prune, no_cache=False, resume=False)


def cache_root(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    """The feature-cache folder these options and this environment name (None: no cache)."""
    from controller.errors import UsageError
    from controller.search.featurecache import DEFAULT_CACHE

    if args.no_cache and (args.resume or args.cache):
        flag = "--resume needs the feature cache" if args.resume else "--cache"
        raise UsageError(f"{flag}: cannot be combined with --no-cache")
    if args.no_cache:
        return None
    if args.cache:
        return Path(args.cache)
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "cadml" / "features"
    return DEFAULT_CACHE.expanduser()


def usable_default(cache: Path | None, args: argparse.Namespace) -> Path | None:
    """The default cache folder when it can be written; else a warning and no cache (a
    read-only home in a container must not stop a build nobody asked to cache)."""
    from controller.errors import SourceError
    from controller.search.featurecache import check_writable

    if cache is None:
        return None
    if args.cache or args.resume:
        check_writable(cache)  # named or needed: refused before --out is created
        return cache
    try:
        check_writable(cache)
    except SourceError as exc:
        sys.stderr.write(f"warning: {exc}; building without the cache\n")
        return None
    return cache


def prepare_out(out: Path) -> None:
    """Create `out` and prove it writable before any drawing is read; a usage error if not."""
    from controller.errors import UsageError
    from controller.search.featurecache import make_writable_folder

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder; name a new or existing folder")
    try:
        make_writable_folder(out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({(exc.strerror or str(exc)).lower()}"
                         "); pick a writable folder") from None


def run(args: argparse.Namespace) -> int:
    if not args.shard:
        if args.record_failure is not None or args.attempt != 1 or args.attempts != 1:
            from controller.errors import UsageError

            raise UsageError("--attempt, --attempts and --record-failure: only with --shard")
        return build(args)
    from controller.cli.shard_cmd import marking_failure, record_failure

    if args.record_failure is not None:
        return record_failure(args)
    with marking_failure(args):  # whatever stops a shard build: a waiting merge learns it
        return build(args)


def build(args: argparse.Namespace) -> int:
    from controller.errors import SourceError, UsageError
    from controller.features.identity import extractor_version
    from controller.features.sandbox import SandboxLimits
    from controller.search.build import build_index
    from controller.search.progress import BuildTick, ProgressMeter

    cache = usable_default(cache_root(args, os.environ), args)
    source = Path(args.source)
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder")
    if not 0 < args.cpu_seconds < float("inf"):  # nan and inf too (no usable timer)
        raise UsageError(f"--cpu-seconds {args.cpu_seconds}: must be a finite number above 0")
    if not args.shard:
        prepare_out(Path(args.out))
    meter = ProgressMeter()

    def progress(tick: BuildTick) -> None:
        if not args.quiet:
            for line in meter.lines(tick):
                sys.stderr.write(line + "\n")

    limits = SandboxLimits(cpu_seconds=args.cpu_seconds)
    if args.shard:
        from controller.cli.shard_cmd import run_shard

        return run_shard(args, source, cache, limits, progress)
    result = build_index(source, Path(args.out), feature_version=args.feature_version,
                         kind=args.kind, workers=args.workers, limits=limits, progress=progress,
                         cache=cache)
    if result.uncached:
        sys.stderr.write(f"warning: {result.uncached} feature vectors could not be cached "
                         f"(last: {result.cache_error}); the artifact is complete, the next "
                         "build parses them again\n")
    uri = result.manifest_path.resolve().as_uri()
    if args.output == "json":
        write_json({"uri": uri, "sha256": result.manifest_sha256, "indexed": result.indexed,
                    "skipped": result.skipped, "parsed": result.parsed,
                    "reused": result.reused, "extractorVersion": extractor_version(),
                    "cache": str(cache) if cache else None})
    else:
        print(f"indexed {result.indexed} drawings, skipped {len(result.skipped)} "
              f"(parsed {result.parsed}, {result.reused} from the cache)")
        for s in result.skipped:
            print(f"  skipped {s['file']}: {s['reason']}")
        print(f"artifact: {{uri: {uri}, sha256: {result.manifest_sha256}, format: faiss-index}}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    import time

    from controller.cli._common import parse_span
    from controller.errors import SourceError
    from controller.search.featurecache import prune

    span = parse_span(args.older_than, "--older-than")
    root = cache_root(args, os.environ)
    if root is None or not root.is_dir():
        raise SourceError(f"feature cache {root}: no such folder; name it with --cache")
    removed, kept = prune(root, time.time() - span.total_seconds(), dry_run=args.dry_run)
    freed = sum(e.size for e in removed)
    if args.output == "json":
        write_json({"cache": str(root), "removed": len(removed), "bytes": freed,
                    "kept": kept, "dryRun": args.dry_run})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(removed)} entries ({freed} bytes) unused for {args.older_than}; "
              f"kept {kept} ({root})")
    return 0
