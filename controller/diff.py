"""What a change does, in meaning rather than YAML: routing, thresholds, stages, releases.

Purely computational: `diff_bundles` compares two Bundles and returns a
ChangeReport; `render_markdown` turns it into a pull-request comment. The
verdict is red when the head breaks any rule, a transition rule (stage moves,
immutable release records) is broken, or human review is weakened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller import steps
from controller.api.v1alpha1 import Model, ModelVersion, Resource, RolloutPolicy
from controller.findings import FieldError, errors_only
from controller.routing import RoutingTable, Threshold, effective_routing, effective_thresholds
from controller.shadow import shadow_change, shadow_status
from controller.validation.bundle import Bundle
from controller.validation.single import check_transition


@dataclass
class ModelChange:
    tenant: str
    model: str
    status: str  # "added" | "removed" | "changed" | "unchanged"
    routing_before: dict[str, int] = field(default_factory=dict)
    routing_after: dict[str, int] = field(default_factory=dict)
    routing_source_before: str = "none"
    routing_source_after: str = "none"
    stage_changes: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    # how a version kept across the change is served differently: (version, what)
    serving_changes: list[tuple[str, str]] = field(default_factory=list)
    # (version, name) → (before, after)
    thresholds: dict[tuple[str, str], tuple[Threshold | None, Threshold | None]] = field(
        default_factory=dict)
    review_before: tuple[bool, str] | None = None
    review_after: tuple[bool, str] | None = None
    steps_change: str | None = None  # what the change does to the canary steps
    shadow_change: str | None = None  # what the change does to spec.shadow

    @property
    def gaining(self) -> list[str]:
        return [v for v, w in self.routing_after.items() if w > self.routing_before.get(v, 0)]

    @property
    def losing(self) -> list[str]:
        return [v for v, w in self.routing_before.items() if w > self.routing_after.get(v, 0)]

    @property
    def changed(self) -> bool:
        return bool(self.routing_before != self.routing_after or self.stage_changes
                    or self.serving_changes or self.thresholds or self.steps_change
                    or self.shadow_change
                    or self.review_before != self.review_after
                    or self.status in ("added", "removed"))


@dataclass
class ChangeReport:
    models: list[ModelChange] = field(default_factory=list)
    releases_added: list[str] = field(default_factory=list)
    releases_removed: list[str] = field(default_factory=list)
    problems: list[FieldError] = field(default_factory=list)  # head validation + transitions
    blockers: list[str] = field(default_factory=list)  # plain-language reasons for red

    @property
    def must_not_merge(self) -> bool:
        return bool(self.blockers or errors_only(self.problems))


def _policy_for(bundle: Bundle, ns: str, model: str) -> RolloutPolicy | None:
    policies = sorted((p for p in bundle.policies(ns) if p.spec.model_ref == model),
                      key=lambda p: p.metadata.name)
    return policies[0] if policies else None


def _stages(versions: dict[str, ModelVersion]) -> dict[str, str]:
    return {sv: v.spec.stage for sv, v in versions.items()}


def _versions(bundle: Bundle, ns: str, model: str) -> dict[str, ModelVersion]:
    return {v.spec.version: v for v in bundle.versions_of(ns, model)}


def _model(bundle: Bundle, ns: str, name: str) -> Model | None:
    item = bundle.get("Model", ns, name)
    return item.resource if item is not None and isinstance(item.resource, Model) else None


def _thresholds_by_version(
    bundle: Bundle, ns: str, model: str
) -> dict[tuple[str, str], Threshold]:
    m = _model(bundle, ns, model)
    policy = _policy_for(bundle, ns, model)
    out: dict[tuple[str, str], Threshold] = {}
    for semver, v in _versions(bundle, ns, model).items():
        if v.spec.stage not in ("CANARY", "STABLE"):
            continue
        for name, t in effective_thresholds(m, v, policy).items():
            out[(semver, name)] = t
    return out


def _model_names(bundle: Bundle) -> set[tuple[str, str]]:
    names = {(m.metadata.namespace or "", m.metadata.name) for m in bundle.models()}
    names |= {(v.metadata.namespace or "", v.spec.model_ref) for v in bundle.versions()}
    names |= {(p.metadata.namespace or "", p.spec.model_ref) for p in bundle.policies()}
    return names


def diff_bundles(
    base: Bundle, head: Bundle, now: datetime, head_findings: list[FieldError]
) -> ChangeReport:
    report = ChangeReport(problems=list(head_findings))
    base_models, head_models = _model_names(base), _model_names(head)
    for ns, name in sorted(base_models | head_models):
        change = ModelChange(ns, name, "changed")
        if (ns, name) not in base_models:
            change.status = "added"
        elif (ns, name) not in head_models:
            change.status = "removed"
        bv, hv = _versions(base, ns, name), _versions(head, ns, name)
        rb = effective_routing(_policy_for(base, ns, name), _stages(bv), now)
        rh = effective_routing(_policy_for(head, ns, name), _stages(hv), now)
        change.routing_before, change.routing_after = rb.as_percentages(), rh.as_percentages()
        change.routing_source_before, change.routing_source_after = rb.source, rh.source
        change.steps_change = _steps_change(_policy_for(base, ns, name),
                                            _policy_for(head, ns, name), rh)
        change.shadow_change = _shadow_change(_policy_for(base, ns, name),
                                              _policy_for(head, ns, name), hv, rh)
        for semver in sorted(set(bv) | set(hv)):
            before = bv[semver].spec.stage if semver in bv else None
            after = hv[semver].spec.stage if semver in hv else None
            if before != after:
                change.stage_changes.append((semver, before, after))
            if semver in bv and semver in hv:
                change.serving_changes += [(semver, what) for what in
                                           _serving_changes(bv[semver], hv[semver])]
        tb, th = _thresholds_by_version(base, ns, name), _thresholds_by_version(head, ns, name)
        for key in sorted(set(tb) | set(th)):
            if tb.get(key) != th.get(key):
                change.thresholds[key] = (tb.get(key), th.get(key))
        mb, mh = _model(base, ns, name), _model(head, ns, name)
        if mb is not None:
            change.review_before = (mb.spec.review.control_allowed,
                                    mb.spec.review.default_decision)
        if mh is not None:
            change.review_after = (mh.spec.review.control_allowed,
                                   mh.spec.review.default_decision)
            if change.review_after != (False, "PENDING_REVIEW"):
                report.blockers.append(
                    f"human review weakened for {ns}/{name}: controlAllowed="
                    f"{str(mh.spec.review.control_allowed).lower()}, defaultDecision="
                    f"{mh.spec.review.default_decision}")
        if change.status == "changed" and not change.changed:
            change.status = "unchanged"
        report.models.append(change)

    for item in head.items:
        old = base.get(*item.key) or _renamed_from(base, head, item.resource)
        if old is None:
            if item.key[0] == "ReleaseRecord":
                report.releases_added.append(f"{item.key[1]}/{item.key[2]}")
            continue
        errors = check_transition(old.resource, item.resource)
        for err in errors:
            doc = item.doc
            report.problems.append(
                err.at(file=doc.file, line=doc.line_of(["spec"]), document=doc.index)
                if doc else err)
        if any(err.rule == "release.immutable" for err in errors):
            edits = field_changes(_spec(old.resource), _spec(item.resource), "spec")
            report.blockers.append(f"immutable ReleaseRecord {item.key[1]}/{item.key[2]} "
                                   "was edited" + (": " + "; ".join(edits) if edits else ""))
    for item in base.items:
        if item.key[0] == "ReleaseRecord" and head.get(*item.key) is None:
            report.releases_removed.append(f"{item.key[1]}/{item.key[2]}")
            report.blockers.append(f"ReleaseRecord {item.key[1]}/{item.key[2]} was deleted; "
                                   "release history is append-only")
    return report


def _steps_change(before: RolloutPolicy | None, after: RolloutPolicy | None,
                  routing: RoutingTable) -> str | None:
    """What the change does to the policy's canary steps (`steps.plan_change`)."""
    return steps.plan_change(
        _spec(before) if before is not None else None,
        _spec(after) if after is not None else None,
        after.spec.strategy.steps if after is not None and after.spec.strategy else [],
        sum(r.weight for r in routing.routes if not r.is_stable))


def _shadow_change(before: RolloutPolicy | None, after: RolloutPolicy | None,
                   versions: dict[str, ModelVersion], routing: RoutingTable) -> str | None:
    """What the change does to the policy's shadow (`shadow.shadow_change`), and why the
    new one would not be mirrored with the head's routing."""
    said = shadow_change(
        (_spec(before) or {}).get("shadow") if before is not None else None,
        (_spec(after) or {}).get("shadow") if after is not None else None)
    st = shadow_status(after, versions, routing) if after is not None and said else None
    return said if st is None or st["inForce"] else f"{said}; not mirrored: {st['reason']}"


def _spec(resource: Resource) -> Any:
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True).get("spec")


def field_changes(before: Any, after: Any, path: str) -> list[str]:
    """Every leaf that differs between two JSON-like values, as `path: before → after`
    (pure; lists compared index by index, a missing side shown as `(absent)`)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in sorted(set(before) | set(after), key=str)
                for line in field_changes(before.get(key, _ABSENT), after.get(key, _ABSENT),
                                          f"{path}.{key}")]
    if isinstance(before, list) and isinstance(after, list):
        return [line for i in range(max(len(before), len(after)))
                for line in field_changes(before[i] if i < len(before) else _ABSENT,
                                          after[i] if i < len(after) else _ABSENT,
                                          f"{path}[{i}]")]
    if before == after:
        return []
    return [f"{path}: {_show(before)} → {_show(after)}"]


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def _renamed_from(base: Bundle, head: Bundle, new: Resource) -> Any:
    """A version renamed by the change: the base object of its model and semver whose name
    the head no longer has (the store carries it on under the new name, so the transition
    rules hold across the rename, as in `cadml reconcile`)."""
    if not isinstance(new, ModelVersion):
        return None
    ns = new.metadata.namespace or ""
    for v in base.versions_of(ns, new.spec.model_ref):
        if v.spec.version == new.spec.version and \
                head.get("ModelVersion", ns, v.metadata.name) is None:
            return base.get("ModelVersion", ns, v.metadata.name)
    return None


def _serving_changes(before: ModelVersion, after: ModelVersion) -> list[str]:
    """What serves this version differently: its artifact, features or search depth."""
    b, a = before.spec, after.spec
    out = []
    if (b.artifact.uri, b.artifact.sha256) != (a.artifact.uri, a.artifact.sha256):
        out.append(f"artifact {b.artifact.sha256 or b.artifact.uri} → "
                   f"{a.artifact.sha256 or a.artifact.uri}")
    if b.feature_version != a.feature_version:
        out.append(f"featureVersion {b.feature_version} → {a.feature_version}")
    eb = b.search.ef_search if b.search else None
    ea = a.search.ef_search if a.search else None
    if eb != ea:
        out.append(f"search.efSearch {eb or 'default'} → {ea or 'default'}")
    return out


def _pct(routing: dict[str, int], version: str) -> str:
    return f"{routing[version]}%" if version in routing else "-"


def _thr(t: Threshold | None) -> str:
    return "-" if t is None else f"{t.value:g} ({t.source})"


def render_markdown(report: ChangeReport, base: str, head: str) -> str:
    lines = [f"## cadml diff `{base}` → `{head}`", ""]
    if report.must_not_merge:
        lines.append("**❌ This change must not merge.**")
        lines += [f"- {b}" for b in report.blockers]
        n = len(errors_only(report.problems))
        if n:
            lines.append(f"- {n} rule violation(s), listed below")
    else:
        lines.append("**✅ Safe to merge:** every rule holds and human review is intact.")
    lines.append("")
    changed = [m for m in report.models if m.status != "unchanged"]
    if not changed:
        lines += ["No change to routing, stages, serving, thresholds or review.", ""]
    for m in changed:
        lines.append(f"### {m.tenant} / {m.model} ({m.status})")
        src = ""
        if m.routing_source_after == "override" or m.routing_source_before == "override":
            src = f" — routing source: {m.routing_source_before} → {m.routing_source_after}"
        lines.append("")
        versions = list(dict.fromkeys([*m.routing_before, *m.routing_after]))
        if versions:
            lines += [f"Traffic{src}:", "", "| version | before | after | |", "|---|---|---|---|"]
            for v in versions:
                b, a = m.routing_before.get(v, 0), m.routing_after.get(v, 0)
                arrow = "⬆ gains" if a > b else "⬇ loses" if a < b else ""
                lines.append(f"| {v} | {_pct(m.routing_before, v)} | "
                             f"{_pct(m.routing_after, v)} | {arrow} |")
            lines.append("")
        if m.steps_change:
            lines += [f"Canary steps: {m.steps_change}", ""]
        if m.shadow_change:
            lines += [f"Shadow: {m.shadow_change}", ""]
        if m.stage_changes:
            lines.append("Stages: " + ", ".join(
                f"{v} {b or '(new)'} → {a or '(removed)'}" for v, b, a in m.stage_changes))
            lines.append("")
        if m.serving_changes:
            lines.append("Served differently: " + ", ".join(
                f"{v}: {what}" for v, what in m.serving_changes))
            lines.append("")
        if m.thresholds:
            lines += ["Effective thresholds (value and where it comes from):", "",
                      "| version | threshold | before | after |", "|---|---|---|---|"]
            for (v, name), (tb, ta) in m.thresholds.items():
                lines.append(f"| {v} | {name} | {_thr(tb)} | {_thr(ta)} |")
            lines.append("")
    if report.releases_added:
        lines.append("Release records added: " + ", ".join(report.releases_added))
        lines.append("")
    if report.problems:
        lines += ["### Problems", ""]
        for f in report.problems:
            loc = f"{f.file}:{f.line}" if f.line is not None else f.file
            lines.append(f"- **{f.severity}** `{f.rule}` {loc} — {f.obj.render()} "
                         f"`{f.path}`: {f.message}")
        lines.append("")
    return "\n".join(lines)
