"""Golden v4 feature vectors of the real corpus: compute, compare, re-pin.

Re-pin (after a deliberate change to extraction, or a new ezdxf):

    CADML_DXF_CORPUS=/work/shared/dxf-corpus python -m tests.worker.golden

It refuses to re-pin changed vectors under the same FEATURE_CODE_VERSION (built
indexes would silently mix old and new vectors): bump FEATURE_CODE_VERSION in
controller/features/identity.py, or pass --keep-version to say the change is
float noise that indexes may keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from controller.features import InvalidDrawing, features_from_bytes
from controller.features.identity import FEATURE_CODE_VERSION, describe
from tests.corpus import DXF_CORPUS

GOLDEN = Path(__file__).with_name("golden_features.json")
RTOL, ATOL = 1e-5, 1e-6
REPIN = "CADML_DXF_CORPUS=/work/shared/dxf-corpus python -m tests.worker.golden"


def drawing_record(data: bytes) -> dict[str, Any]:
    record: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        f = features_from_bytes(data, "v4")
    except InvalidDrawing as exc:
        return {**record, "error": exc.code}
    return {**record, "v4": [float(v) for v in f.vector], "entities": f.entities,
            "truncated": f.truncated, "recovered": f.recovered}


def compute(corpus: Path = DXF_CORPUS) -> dict[str, Any]:
    drawings = {p.relative_to(corpus).as_posix(): drawing_record(p.read_bytes())
                for p in sorted(corpus.rglob("*.dxf"))}
    return {**describe(), "drawings": drawings}


def differences(name: str, pinned: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a pinned record and a fresh one (empty: the same)."""
    if pinned["sha256"] != now["sha256"]:
        return [f"{name}: the drawing itself changed (sha256): re-pin ({REPIN})"]
    out = [f"{name}: {key} was {pinned.get(key)!r}, now {now.get(key)!r}"
           for key in ("error", "entities", "truncated", "recovered")
           if pinned.get(key) != now.get(key)]
    if "v4" in pinned and "v4" in now:
        a, b = np.asarray(pinned["v4"]), np.asarray(now["v4"])
        for dim in np.flatnonzero(~np.isclose(a, b, rtol=RTOL, atol=ATOL)):
            out.append(f"{name}: dimension {dim} was {float(a[dim])!r}, now {float(b[dim])!r}")
    return out


def render(pins: dict[str, Any]) -> str:
    """The pins as JSON with one line per drawing, so a re-pin reads well in a diff."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in pins.items() if k != "drawings"]
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in pins["drawings"].items())
    return "{\n" + "\n".join(head) + '\n "drawings": {\n' + body + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-version", action="store_true",
                   help="re-pin changed vectors without a new FEATURE_CODE_VERSION")
    args = p.parse_args(argv)
    fresh = compute()
    if GOLDEN.exists():
        old = json.loads(GOLDEN.read_text())
        changed = [d for name, rec in fresh["drawings"].items() if name in old["drawings"]
                   for d in differences(name, old["drawings"][name], rec)]
        if (changed and old["featureCodeVersion"] == FEATURE_CODE_VERSION
                and not args.keep_version):
            sys.stderr.write("\n".join(changed[:20]) + "\nvectors changed under the same "
                             f"FEATURE_CODE_VERSION ({FEATURE_CODE_VERSION}): bump it in "
                             "controller/features/identity.py or pass --keep-version\n")
            return 1
    GOLDEN.write_text(render(fresh))
    print(f"pinned {len(fresh['drawings'])} drawings to {GOLDEN} ({fresh['extractorVersion']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
