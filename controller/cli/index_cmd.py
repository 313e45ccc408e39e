"""`cadml index build`: build a similarity-index artifact from a folder of DXF drawings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli._common import write_json

HELP = """\
Extract features from every .dxf below DIR (in sandboxed processes with CPU and
memory limits), build a faiss index (exact `flat`, or approximate `hnsw` for large
corpora) and write OUT/index.faiss, OUT/vectors.npy and OUT/manifest.json. Point a
ModelVersion at the manifest:

  artifact: {uri: file:///…/OUT/manifest.json, sha256: <printed below>, format: faiss-index}

Unreadable drawings are skipped and listed in the manifest with their reason.
exit codes: 0 built · 1 nothing could be indexed · 2 usage or I/O error
"""


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="build similarity-index artifacts")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="index a folder of DXF drawings", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("source", metavar="DIR")
    b.add_argument("--out", required=True, metavar="OUT")
    b.add_argument("--feature-version", default="v4", choices=("v1", "v2", "v3", "v4"))
    b.add_argument("--kind", default="flat", choices=("flat", "hnsw"))
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--cpu-seconds", type=float, default=10.0,
                   help="CPU time allowed per drawing (default 10)")
    b.add_argument("--quiet", action="store_true", help="no per-file progress")
    b.add_argument("--output", "-o", choices=("text", "json"), default="text")
    b.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from controller.errors import SourceError
    from controller.features.sandbox import SandboxLimits
    from controller.search.build import build_index

    source = Path(args.source)
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder")

    def progress(done: int, total: int, name: str, what: str) -> None:
        if not args.quiet:
            width = 30
            bar = "#" * (done * width // total) + "-" * (width - done * width // total)
            sys.stderr.write(f"[{bar}] {done}/{total} {name}: {what}\n")

    result = build_index(source, Path(args.out), feature_version=args.feature_version,
                         kind=args.kind, workers=args.workers,
                         limits=SandboxLimits(cpu_seconds=args.cpu_seconds), progress=progress)
    uri = result.manifest_path.resolve().as_uri()
    if args.output == "json":
        write_json({"uri": uri, "sha256": result.manifest_sha256, "indexed": result.indexed,
                    "skipped": result.skipped})
    else:
        print(f"indexed {result.indexed} drawings, skipped {len(result.skipped)}")
        for s in result.skipped:
            print(f"  skipped {s['file']}: {s['reason']}")
        print(f"artifact: {{uri: {uri}, sha256: {result.manifest_sha256}, format: faiss-index}}")
    return 0
