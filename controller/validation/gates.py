"""Release gates C1..C5 of a ReleaseRecord, judged from its declared evidence.

Purely computational. A gate with no evidence to judge is `Unknown` and does not
block; a `Fail` blocks the release from becoming the target of a STABLE promotion.
"""

from __future__ import annotations

from controller.api.v1alpha1 import GateResult, ReleaseRecordSpec

COST_INCREASE_LIMIT_PERCENT = 5.0


def _major(semver: str) -> int:
    return int(semver.split(".", 1)[0])


def evaluate_gates(spec: ReleaseRecordSpec) -> list[GateResult]:
    ev = spec.evidence
    results = []

    if ev.tool_schema_from and ev.tool_schema_to:
        breaking = _major(ev.tool_schema_to) > _major(ev.tool_schema_from)
        if breaking and not ev.migration_note:
            results.append(GateResult(gate="C1", verdict="Fail", reason=(
                f"tool schema {ev.tool_schema_from} → {ev.tool_schema_to} is a breaking "
                "(major) change without a migration note")))
        else:
            results.append(GateResult(gate="C1", verdict="Pass", reason=(
                "breaking change with a migration note" if breaking
                else "no breaking tool-schema change")))
    else:
        results.append(GateResult(gate="C1", verdict="Pass", reason="no tool-schema change"))

    if ev.eval_score is None or ev.eval_threshold is None:
        results.append(GateResult(gate="C2", verdict="Unknown",
                                  reason="evalScore/evalThreshold not declared"))
    elif ev.eval_score < ev.eval_threshold:
        results.append(GateResult(gate="C2", verdict="Fail", reason=(
            f"eval score {ev.eval_score} is below the threshold {ev.eval_threshold}")))
    else:
        results.append(GateResult(gate="C2", verdict="Pass", reason=(
            f"eval score {ev.eval_score} ≥ {ev.eval_threshold}")))

    if ev.injection_success_rate is None:
        results.append(GateResult(gate="C3", verdict="Unknown",
                                  reason="injectionSuccessRate not declared"))
    elif ev.injection_success_rate > 0:
        results.append(GateResult(gate="C3", verdict="Fail", reason=(
            f"prompt-injection success rate {ev.injection_success_rate} > 0")))
    else:
        results.append(GateResult(gate="C3", verdict="Pass",
                                  reason="no prompt injection succeeded"))

    delta = ev.cost_per_case_delta_percent
    if delta is None:
        results.append(GateResult(gate="C4", verdict="Unknown",
                                  reason="costPerCaseDeltaPercent not declared"))
    elif delta > COST_INCREASE_LIMIT_PERCENT and not ev.business_approver:
        results.append(GateResult(gate="C4", verdict="Fail", reason=(
            f"cost per case +{delta}% (> +{COST_INCREASE_LIMIT_PERCENT}%) without "
            "business approval")))
    else:
        results.append(GateResult(gate="C4", verdict="Pass", reason=f"cost per case {delta:+}%"))

    if spec.risk_level == "write" and not ev.hitl_proof_uri:
        results.append(GateResult(gate="C5", verdict="Fail", reason=(
            "riskLevel write without human-in-the-loop proof (hitlProofUri)")))
    else:
        results.append(GateResult(gate="C5", verdict="Pass", reason=(
            "human-in-the-loop proof given" if spec.risk_level == "write"
            else f"riskLevel {spec.risk_level} needs no HITL proof")))
    return results


def failed_gates(spec: ReleaseRecordSpec) -> list[GateResult]:
    return [g for g in evaluate_gates(spec) if g.verdict == "Fail"]


def gate_summary(results: list[GateResult]) -> str:
    passed = sum(1 for g in results if g.verdict == "Pass")
    failed = [g.gate for g in results if g.verdict == "Fail"]
    text = f"pass {passed}/{len(results)}"
    return text + (f", fail {','.join(failed)}" if failed else "")
