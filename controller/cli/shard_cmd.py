"""`cadml index build --shard I/N` and `cadml index merge`: one index built by many machines
(an Indexed Job's pods, or local processes), merged into the artifact one build writes."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli._common import add_parser, positive_int, write_json
from controller.search.shardwait import clear_marker, failure_record, write_marker

if TYPE_CHECKING:
    from controller.features.sandbox import SandboxLimits
    from controller.search.build import BuildResult

SHARD_HELP = ("build only shard I of N (I from 0: JOB_COMPLETION_INDEX) into the shard file "
              "--out names; a drawing's shard is a hash of its path; merge the N files with "
              "`cadml index merge`")

MERGE_HELP = """\
Merge the shard files of `cadml index build DIR --shard I/N --out FILE` (one per I in
0..N-1) into OUT/index.faiss, OUT/vectors.npy and OUT/manifest.json: the same bytes
a single `cadml index build DIR --out OUT` with the same options writes. Point a
ModelVersion at the manifest:

  artifact: {uri: file:///…/OUT/manifest.json, sha256: <printed below>, format: faiss-index}

Every shard is read and checked before anything is written: shards built by
another extractor (extractorVersion), with other options (feature version, index
kind, limits), of another N, a shard given twice, a missing shard, shards that saw
different folders (drawings added, removed or renamed between their builds) or a
damaged file are refused with the file and the field, and OUT is left untouched.

--wait merges once every shard file exists (the shards of an Indexed Job still
running) and fails at once, naming them, when shards failed for good: a shard
build that fails writes SHARD.failed beside its shard file, final on its last
attempt (--attempt K --attempts M) or when a retry cannot help (exit code 1).
Needs the 'worker' extra: pip install 'cadml[worker]'.
exit codes: 0 merged · 1 shards refused, or nothing could be indexed · 2 usage or I/O
error (OUT is a file or cannot be created)
"""

MERGE_EXAMPLES = """\
cadml index build drawings/ --shard 0/3 --out shards/0.cadml-shard   # and 1/3, 2/3: anywhere
cadml index merge shards/*.cadml-shard --out artifacts/parts-v4 -o json
cadml index merge 'shards/shard-{I}-of-8.cadml-shard' --shards 8 --wait --out artifacts/parts-v4
"""


def register_merge(isub: Any) -> None:
    m = add_parser(isub, "merge", help="merge shard files into one index artifact",
                   description=MERGE_HELP, examples=MERGE_EXAMPLES)
    m.add_argument("shards", nargs="+", metavar="SHARD", help="shard files, one per I of I/N")
    m.add_argument("--out", required=True, metavar="OUT",
                   help="folder to write the artifact into (created; files in it replaced)")
    m.add_argument("--shards", dest="shards_count", type=positive_int, metavar="N",
                   help="with one SHARD naming {I} (shard-{I}-of-8.cadml-shard): the N files "
                        "it names for I = 0..N-1")
    m.add_argument("--wait", action="store_true",
                   help="wait until every shard file exists (an Indexed Job still running); "
                        "fail at once, naming them, when shards failed for good (a shard "
                        "build's SHARD.failed marker)")
    m.add_argument("--wait-timeout", type=float, metavar="S",
                   help="with --wait: give up after S seconds (default: wait as long as it "
                        "takes)")
    m.add_argument("--output", "-o", choices=("text", "json"), default="text",
                   help="output format")
    m.set_defaults(handler=run_merge)


def shard_out(out: Path) -> None:
    """`--out` of a shard build names a file in a writable folder; checked before any work."""
    from controller.cli.index_cmd import prepare_out
    from controller.errors import UsageError

    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; with --shard, --out names the shard file")
    prepare_out(out.parent)


def run_shard(args: argparse.Namespace, source: Path, cache: Path | None,
              limits: SandboxLimits, progress: Any) -> int:
    from controller.features.identity import extractor_version
    from controller.search.shards import build_shard, parse_shard

    spec = parse_shard(args.shard)
    _check_attempts(args)
    out = Path(args.out)
    shard_out(out)
    # a marker there now is an earlier attempt's or build's, which is over: a waiting
    # merge must not fail on it while this one runs (this one writes its own on failure)
    clear_marker(out)
    result = build_shard(source, out, spec, feature_version=args.feature_version,
                         kind=args.kind, workers=args.workers, limits=limits,
                         progress=progress, cache=cache)
    clear_marker(out)  # an earlier attempt's: this one's shard file is in place
    if args.output == "json":
        write_json({"shard": str(spec), "file": str(out), "sha256": result.manifest_sha256,
                    "indexed": result.indexed, "skipped": result.skipped,
                    "parsed": result.parsed, "reused": result.reused,
                    "extractorVersion": extractor_version(),
                    "cache": str(cache) if cache else None})
    else:
        print(f"shard {spec}: indexed {result.indexed} drawings, skipped "
              f"{len(result.skipped)} (parsed {result.parsed}, {result.reused} from the cache)")
        print(f"shard file: {out} (merge all {spec.count} with `cadml index merge`)")
    return 0


def _check_attempts(args: argparse.Namespace) -> None:
    """--attempt K of --attempts M: K beyond M would mark a final failure that is none."""
    if args.attempt > args.attempts:
        from controller.errors import UsageError

        raise UsageError(f"--attempt {args.attempt}: more than --attempts {args.attempts}")


def record_failure(args: argparse.Namespace) -> int:
    """`--record-failure CODE`: the marker of an attempt whose process could not write it
    (what the Job's shell line runs after a kill), then exit with that code."""
    _check_attempts(args)
    code = int(args.record_failure)
    signal = f" (killed by signal {code - 128}: out of memory, or the pod deleted?)" \
        if code > 128 else ""
    write_marker(Path(args.out), failure_record(args.shard, args.attempt, args.attempts, code,
                                                f"the shard build ended with exit code "
                                                f"{code}{signal}"))
    return code


@contextlib.contextmanager
def marking_failure(args: argparse.Namespace) -> Iterator[None]:
    """Run a shard build; if anything stops it, write this attempt's failure marker beside
    --out (what `merge --wait` fails fast on) and let the error go on up."""
    try:
        yield
    except BaseException as exc:
        from controller.cli.failures import explain

        out = Path(args.out)
        message, code = explain(exc) if isinstance(exc, Exception) else (type(exc).__name__,
                                                                          130)
        if not out.is_dir():
            write_marker(out, failure_record(args.shard, args.attempt, args.attempts, code,
                                             message))
        raise


def shard_files(args: argparse.Namespace) -> list[Path]:
    """The SHARD arguments, a pattern naming {I} expanded to --shards files."""
    from controller.errors import UsageError

    patterned = [s for s in args.shards if "{I}" in s]
    if not patterned:
        if args.shards_count is not None:
            raise UsageError("--shards N: give one SHARD naming {I}, such as "
                             "shards/shard-{I}-of-8.cadml-shard")
        return [Path(s) for s in args.shards]
    if len(args.shards) != 1 or args.shards_count is None:
        raise UsageError(f"{patterned[0]}: a SHARD naming {{I}} comes alone, with --shards N")
    return [Path(args.shards[0].replace("{I}", str(i))) for i in range(args.shards_count)]


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_merge(args: argparse.Namespace) -> int:
    from controller.cli.index_cmd import prepare_out
    from controller.errors import UsageError
    from controller.features import InvalidDrawing
    from controller.search.shards import merge_shards, read_compatible, write_merged
    from controller.search.shardwait import wait_for_shards

    paths = shard_files(args)
    if args.wait_timeout is not None and not (args.wait and 0 < args.wait_timeout < 1e9):
        raise UsageError(f"--wait-timeout {args.wait_timeout}: needs --wait, and a number of "
                         "seconds above 0")
    if args.wait:
        wait_for_shards(paths, timeout=args.wait_timeout, say=say)
    shards = read_compatible(paths)
    merged = merge_shards(shards)
    if not merged.files:
        raise InvalidDrawing(f"no drawing in the {len(shards)} shards could be indexed",
                             code="nothing_indexed", stage="index")
    out = Path(args.out)
    prepare_out(out)
    result = write_merged(shards, merged, out)
    report(args, result, shards[0].meta["extractorVersion"], {"shards": len(shards)})
    return 0


def report(args: argparse.Namespace, result: BuildResult, extractor: str,
           extra: dict[str, Any]) -> None:
    """What a finished build or merge prints: counts, skipped drawings and the artifact
    (uri and sha256 for the ModelVersion)."""
    uri = result.manifest_path.resolve().as_uri()
    if args.output == "json":
        write_json({"uri": uri, "sha256": result.manifest_sha256, "indexed": result.indexed,
                    "skipped": result.skipped, **extra, "extractorVersion": extractor})
        return
    details = ", ".join(f"{k} {v}" for k, v in extra.items())
    print(f"indexed {result.indexed} drawings, skipped {len(result.skipped)} ({details})")
    for s in result.skipped:
        print(f"  skipped {s['file']}: {s['reason']}")
    print(f"artifact: {{uri: {uri}, sha256: {result.manifest_sha256}, format: faiss-index}}")
