"""Which extractor computed a feature vector: `extractorVersion`, recorded in every manifest.

A vector depends on the feature version (`v1`..`v4`, the layout), on the code that
computes it (controller/features/extract.py) and on the ezdxf that parsed the file.
`extractorVersion` = "x<FEATURE_CODE_VERSION>-" + the first 16 hex digits of
sha256(FEATURE_CODE_VERSION, sha256 of extract.py's source, ezdxf's version).

- FEATURE_CODE_VERSION is bumped by hand when a change to extraction is meant to
  change vectors (the golden-vector test, tests/worker/test_golden_features.py, fails
  until it is bumped and the vectors re-pinned: `python -m tests.worker.golden`).
- The source hash makes any edit of extract.py a new identity, comments included:
  a cache keyed by it (controller.search.featurecache) can never serve a vector
  computed by other code; the cost of a comment edit is one cold rebuild.
- The ezdxf version is part of it because the parser decides what entities exist.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

FEATURE_CODE_VERSION = 1
EXTRACT_SOURCE = Path(__file__).with_name("extract.py")


def compose_extractor_version(code_version: int, source: bytes, ezdxf_version: str) -> str:
    """Purely computational: the identity of an extractor from its three ingredients."""
    digest = hashlib.sha256(
        f"{code_version}\n{hashlib.sha256(source).hexdigest()}\n{ezdxf_version}".encode()
    ).hexdigest()
    return f"x{code_version}-{digest[:16]}"


@cache
def extractor_version() -> str:
    """The identity of the extractor installed here (read once per process)."""
    return compose_extractor_version(FEATURE_CODE_VERSION, EXTRACT_SOURCE.read_bytes(),
                                     metadata.version("ezdxf"))


def describe() -> dict[str, object]:
    """What `extractorVersion` is made of, for manifests and health output."""
    return {"extractorVersion": extractor_version(), "featureCodeVersion": FEATURE_CODE_VERSION,
            "ezdxf": metadata.version("ezdxf")}


def mismatched(ours: str, artifacts: dict[str, str | None]) -> list[str]:
    """Purely computational: the versions whose artifact another extractor built. Their
    stored vectors and the vectors this worker computes from uploads are not comparable
    (an artifact without an extractorVersion predates it and cannot be judged)."""
    return sorted(v for v, theirs in artifacts.items() if theirs is not None and theirs != ours)
