"""Benchmark: `cadml validate` of 10,000 generated resources vs plain YAML parsing of them.

Run: python -m bench.validate_bench [--resources N]
Prints the time of each and the ratio validate / parse (target: at most 4x).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from controller.sources import collect_paths
from controller.validation import validate_files

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def generate(root: Path, resources: int) -> int:
    """Tenants of models, each model with a STABLE and a CANARY version and a policy."""
    per_model = 4
    models = resources // per_model
    per_tenant = 25
    count = 0
    for t in range((models + per_tenant - 1) // per_tenant):
        ns = f"tenant-{t:03d}"
        docs = []
        for m in range(min(per_tenant, models - t * per_tenant)):
            name = f"model-{m:03d}"
            docs.append(f"""apiVersion: cadml.io/v1alpha1
kind: Model
metadata: {{name: {name}, namespace: {ns}}}
spec:
  modelKey: {name}
  provider: bench
  displayName: Model {m}
  thresholdDefaults: {{similarity: 0.8}}
""")
            for semver, stage in (("1.0.0", "STABLE"), ("1.1.0", "CANARY")):
                digest = hashlib.sha256(f"{ns}{name}{semver}".encode()).hexdigest()
                docs.append(f"""apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata: {{name: {name}-{semver.replace('.', '-')}, namespace: {ns}}}
spec:
  modelRef: {name}
  version: {semver}
  stage: {stage}
  artifact: {{uri: "s3://bench/{name}/{semver}", sha256: {digest}, format: faiss-index}}
""")
            docs.append(f"""apiVersion: cadml.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  modelRef: {name}
  weights:
    - {{version: 1.0.0, weight: 90}}
    - {{version: 1.1.0, weight: 10}}
""")
            count += per_model
        (root / f"{ns}.yaml").write_text("---\n".join(docs))
    return count


def best_of(n: int, fn):  # type: ignore[no-untyped-def]
    best = float("inf")
    result = None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = generate(root, args.resources)
        paths = sorted(root.glob("*.yaml"))

        def parse_only() -> int:
            docs = 0
            for p in paths:
                docs += sum(1 for _ in yaml.load_all(p.read_bytes(), Loader=_LOADER))
            return docs

        def validate() -> int:
            files, _ = collect_paths([str(root)], 8 * 1024 * 1024)
            report = validate_files(files, datetime.now(UTC))
            assert report.ok, report.findings[:3]
            return report.resources

        t_parse, docs = best_of(args.repeat, parse_only)
        t_validate, checked = best_of(args.repeat, validate)
    print(f"resources: {n} in {len(paths)} files (parsed {docs}, validated {checked})")
    print(f"plain YAML parse ({_LOADER.__name__}): {t_parse:.3f} s "
          f"({n / t_parse:,.0f} resources/s)")
    print(f"cadml validate:                {t_validate:.3f} s "
          f"({n / t_validate:,.0f} resources/s)")
    print(f"ratio validate/parse: {t_validate / t_parse:.2f}x (target <= 4x)")


if __name__ == "__main__":
    main()
