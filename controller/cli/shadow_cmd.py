"""`cadml compare TENANT/MODEL --shadow`: how the shadow version's results differ from the
served ones, from the shadow runs the workers recorded. Reads only."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli._common import parse_span, parse_time, write_json
from controller.errors import UsageError


def compare_shadow(args: argparse.Namespace, tenant: str, model: str,
                   known_models: Any) -> int:
    from controller.shadow import shadow_report
    from controller.store.open import open_store

    if args.output == "markdown":
        raise UsageError("--shadow prints text or json (-o json)")
    if args.changed < 0:
        raise UsageError("--changed must be 0 or more")
    store = open_store(args.store, create=False)
    now, window = parse_time(args.now), parse_span(args.window, "--window")
    with store.read(tenant, "cadml-compare") as tx:
        known_models(tx)
        rows = [r for r in tx.shadow_runs(model, since=now - window) if r["created_at"] <= now]
    report = shadow_report(rows, changed=args.changed)
    if args.output == "json":
        write_json({"tenant": tenant, "model": model, "window": args.window,
                    "end": now.isoformat(), **report})
        return 0
    print(f"{tenant}/{model} shadow comparison, window {args.window} ending {now.isoformat()}")
    if not report["versions"]:
        print("no shadow runs in the window: set spec.shadow {version, percent} on the "
              "RolloutPolicy and send traffic to the workers")
        return 0
    _versions(report["versions"])
    for m in report["migrations"]:
        _migration(m)
    return 0


def _f(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _versions(versions: dict[str, dict[str, Any]]) -> None:
    print(f"{'SHADOW':<12} {'SERVED':<14} {'QUERIES':>7} {'FAILED':>6}  "
          f"{'OVERLAP@10 MEAN/MEDIAN/P10':<26} {'RBO MEAN/MEDIAN/P10':<21} "
          f"{'<0.5':>6} {'TOP1 Δ MEAN':>11}")
    for version, v in versions.items():
        failed = sum(v.get("failed", {}).values())
        if not v["sampleSize"]:
            print(f"{version:<12} {'-':<14} {0:>7} {failed:>6}  (every shadow search "
                  f"failed: {', '.join(f'{k} x{n}' for k, n in v['failed'].items())})")
            continue
        ov, rb = v["overlapAt10"], v["rbo"]
        print(f"{version:<12} {','.join(v['servedVersions']):<14} {v['sampleSize']:>7} "
              f"{failed:>6}  {_f(ov['mean'])}/{_f(ov['median'])}/{_f(ov['p10']):<14} "
              f"{_f(rb['mean'])}/{_f(rb['median'])}/{_f(rb['p10']):<9} "
              f"{v['lowOverlapShare']:>6.0%} {_f(v['top1Delta']['mean'], True):>11}")
    for version, v in versions.items():
        if not v.get("changedMost"):
            continue
        print(f"\nqueries that changed most ({version}):")
        print(f"  {'JOB':<24} {'RUN':<32} {'SERVED':<10} {'OVERLAP@10':>10} {'RBO':>6} "
              f"{'TOP1 Δ':>7}")
        for c in v["changedMost"]:
            print(f"  {c['jobId'][:24]:<24} {c['runKey']:<32} {c['servedVersion']:<10} "
                  f"{c['overlapAt10']:>10.2f} {c['rbo']:>6.3f} "
                  f"{_f(c['top1Delta'], True):>7}")


def _migration(m: dict[str, Any]) -> None:
    a, b = m["featureVersions"]
    print(f"\nfeature versions {a} → {b} ({m['servedVersion']} → {m['shadowVersion']}, "
          f"{m['sampleSize']} queries): top-1 score delta mean {_f(m['meanDelta'], True)}, "
          f"median {_f(m['medianDelta'], True)}, "
          + ("-" if m["negativeShare"] is None else f"{m['negativeShare']:.0%}")
          + " negative")
    for w in m["warnings"]:
        print(f"  WARNING {w}")
