"""Cross-object rules: what only a view of several objects of a tenant can check.

Purely computational: `check_bundle` takes a Bundle and the time, returns a list
of FieldErrors and never raises. Some rules can be satisfied by an object that
has not arrived yet (a reference to something Argo CD will create a moment
later); they are listed in `FIXABLE_LATER`, and the admission webhook lets them
pass while the reconciler shows them as a waiting condition. Offline, with the
whole tree in view, they are errors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from controller.api.v1alpha1 import (
    ROUTABLE_STAGES,
    Model,
    ModelVersion,
    Resource,
    RolloutPolicy,
)
from controller.findings import FieldError
from controller.validation.bundle import Bundle
from controller.validation.gates import failed_gates
from controller.validation.parse import ref_of

FIXABLE_LATER: frozenset[str] = frozenset(
    {
        "version.model-ref",
        "policy.model-ref",
        "policy.version-ref",
        "policy.routes-routable",
        "policy.stable-route",
        "policy.canary-weight-range",
        "policy.override-ref",
        "release.model-ref",
        "release.rollback-target",
        # a rename through a sync: the new object arrives while the old one still exists
        # (kubectl apply --prune and Argo CD prune after applying); the newer one waits
        "model.key-unique",
        "version.semver-unique",
        "policy.one-per-model",
        "release.id-unique",
    }
)


def arrival(r: Resource) -> tuple[bool, str, str]:
    """Order of arrival: by creationTimestamp where the API server set one (an object
    being admitted has none yet and comes last), then by name (offline, in Git)."""
    created = r.metadata.creation_timestamp
    return created is None, created or "", r.metadata.name


def _e(rule: str, res: Resource, path: str, message: str, warning: bool = False) -> FieldError:
    return FieldError(rule, path, message, obj=ref_of(res),
                      severity="warning" if warning else "error")


def _model_key(bundle: Bundle, v: ModelVersion) -> str:
    ns = v.metadata.namespace or ""
    model = bundle.get("Model", ns, v.spec.model_ref)
    if model is not None and isinstance(model.resource, Model):
        return model.resource.spec.model_key
    return v.spec.model_ref


def check_models(bundle: Bundle, ns: str) -> list[FieldError]:
    errors = []
    by_key = defaultdict(list)
    for m in bundle.models(ns):
        by_key[m.spec.model_key].append(m)
    for key, models in by_key.items():
        first, *later = sorted(models, key=arrival)
        for m in later:
            errors.append(_e("model.key-unique", m, "spec.modelKey",
                             f"modelKey {key!r} is already used by Model "
                             f"{ns}/{first.metadata.name}; model keys are unique per tenant "
                             f"(a rename: {m.metadata.name} takes over once "
                             f"{first.metadata.name} is removed)"))
    return errors


def check_versions(bundle: Bundle, ns: str) -> list[FieldError]:
    errors = []
    stables: dict[str, list[ModelVersion]] = defaultdict(list)
    semvers: dict[tuple[str, str], list[ModelVersion]] = defaultdict(list)
    releases_of = defaultdict(list)
    for rr in bundle.releases(ns):
        releases_of[rr.spec.artifacts.model_ref].append(rr)
    for v in bundle.versions(ns):
        if bundle.get("Model", ns, v.spec.model_ref) is None:
            errors.append(_e("version.model-ref", v, "spec.modelRef",
                             f"Model {ns}/{v.spec.model_ref} does not exist"))
        semvers[(v.spec.model_ref, v.spec.version)].append(v)
        if v.spec.stage == "STABLE":
            stables[_model_key(bundle, v)].append(v)
            for rr in releases_of.get(v.metadata.name, []):
                failed = failed_gates(rr.spec)
                if failed:
                    detail = "; ".join(f"{g.gate}: {g.reason}" for g in failed)
                    errors.append(_e("version.release-gates", v, "spec.stage",
                                     f"cannot be STABLE: ReleaseRecord {ns}/{rr.metadata.name} "
                                     f"failed release gates ({detail})"))
    renamed: set[int] = set()  # later objects of a semver: one version under two names
    for (model, semver), same in semvers.items():
        first, *later = sorted(same, key=arrival)
        for v in later:
            renamed.add(id(v))
            errors.append(_e("version.semver-unique", v, "spec.version",
                             f"model {model!r} already has version {semver} "
                             f"({ns}/{first.metadata.name}); a rename: {v.metadata.name} "
                             f"takes over once {first.metadata.name} is removed"))
    for key, all_stable in stables.items():
        vs = [v for v in all_stable if id(v) not in renamed]
        if len(vs) < 2:
            continue
        for v in vs:
            others = ", ".join(f"{ns}/{o.metadata.name} ({o.spec.version})"
                               for o in vs if o is not v)
            errors.append(_e("version.one-stable", v, "spec.stage",
                             f"model key {key!r} already has a STABLE version: {others}. Only "
                             "one STABLE per model: mark the old one DEPRECATED in the same "
                             "commit (`cadml promote` does both); a sync retry then applies "
                             "this one"))
    return errors


def check_policies(bundle: Bundle, ns: str, now: datetime) -> list[FieldError]:
    errors = []
    by_model = defaultdict(list)
    for p in bundle.policies(ns):
        model_name = p.spec.model_ref
        by_model[model_name].append(p)
        if bundle.get("Model", ns, model_name) is None:
            errors.append(_e("policy.model-ref", p, "spec.modelRef",
                             f"Model {ns}/{model_name} does not exist"))
        versions = {v.spec.version: v for v in bundle.versions_of(ns, model_name)}
        has_stable_route = False
        unresolved = False
        for i, w in enumerate(p.spec.weights):
            v = versions.get(w.version)
            if v is None:
                unresolved = True
                errors.append(_e("policy.version-ref", p, f"spec.weights[{i}].version",
                                 f"model {model_name!r} has no version {w.version}"))
                continue
            stage = v.spec.stage
            if stage not in ROUTABLE_STAGES:
                errors.append(_e("policy.routes-routable", p, f"spec.weights[{i}].version",
                                 f"version {w.version} is {stage}; a policy routes only to "
                                 "CANARY and STABLE versions"))
            if stage == "STABLE":
                has_stable_route = True
            elif not 1 <= w.weight <= 99:
                errors.append(_e("policy.canary-weight-range", p, f"spec.weights[{i}].weight",
                                 f"canary version {w.version} has weight {w.weight}; canary "
                                 "weights must be within 1..99 (the STABLE version takes the "
                                 "rest)"))
        if not has_stable_route and not unresolved:
            stable = [v.spec.version for v in versions.values() if v.spec.stage == "STABLE"]
            hint = (f"add its STABLE version {stable[0]}" if stable
                    else f"model {model_name!r} has no STABLE version yet")
            errors.append(_e("policy.stable-route", p, "spec.weights",
                             f"the policy must route to the model's STABLE version, which takes "
                             f"the rest of the traffic: {hint}"))
        ov = p.spec.override
        if ov is not None:
            target = versions.get(ov.version)
            if target is None or target.spec.stage not in ROUTABLE_STAGES:
                what = "does not exist" if target is None else f"is {target.spec.stage}"
                errors.append(_e("policy.override-ref", p, "spec.override.version",
                                 f"override version {ov.version} {what}; an override must "
                                 "name a CANARY or STABLE version of the model"))
            elif ov.until is not None and ov.until <= now:
                errors.append(_e("policy.override-expired", p, "spec.override.until",
                                 f"the override ended at {ov.until.isoformat()} and no longer "
                                 "applies", warning=True))
        errors.extend(_check_shadow(p, versions))
        if p.spec.valid_until is not None and p.spec.valid_until <= now:
            errors.append(_e("policy.expired", p, "spec.validUntil",
                             f"the policy expired at {p.spec.valid_until.isoformat()}; the "
                             "model falls back to its STABLE version", warning=True))
    for model_name, policies in by_model.items():
        first, *later = sorted(policies, key=arrival)
        for p in later:
            errors.append(_e("policy.one-per-model", p, "spec.modelRef",
                             f"model {model_name!r} already has RolloutPolicy "
                             f"{ns}/{first.metadata.name}; one policy per model (a rename: "
                             f"{p.metadata.name} takes over once {first.metadata.name} is "
                             "removed)"))
    return errors


def _check_shadow(p: RolloutPolicy, versions: Mapping[str, ModelVersion]) -> list[FieldError]:
    """The shadow version: a CANARY version of the model, or a DRAFT one whose artifact
    has a sha256 (the worker verifies what it loads; an unverified artifact is never
    loaded, not even to compare)."""
    sh = p.spec.shadow
    if sh is None:
        return []
    target = versions.get(sh.version)
    if target is None:
        return [_e("policy.shadow-ref", p, "spec.shadow.version",
                   f"model {p.spec.model_ref!r} has no version {sh.version}; shadow a CANARY "
                   "version, or a DRAFT one with an artifact sha256")]
    stage, sha = target.spec.stage, target.spec.artifact.sha256
    if stage == "CANARY" or (stage == "DRAFT" and sha is not None):
        return []
    why = ("its artifact has no sha256: add artifact.sha256 so the worker can verify it"
           if stage == "DRAFT" else
           f"it is {stage}; shadow a CANARY version, or a DRAFT one with an artifact sha256")
    return [_e("policy.shadow-stage", p, "spec.shadow.version",
               f"version {sh.version} cannot be shadowed: {why}")]


def check_releases(bundle: Bundle, ns: str) -> list[FieldError]:
    errors = []
    by_id = defaultdict(list)
    for rr in bundle.releases(ns):
        by_id[rr.spec.release_id].append(rr)
    for rr in bundle.releases(ns):
        ref = rr.spec.artifacts.model_ref
        if bundle.get("ModelVersion", ns, ref) is None:
            errors.append(_e("release.model-ref", rr, "spec.artifacts.modelRef",
                             f"ModelVersion {ns}/{ref} does not exist"))
        target = rr.spec.rollback_target
        if target is None:
            continue
        previous = by_id.get(target)
        if not previous:
            errors.append(_e("release.rollback-target", rr, "spec.rollbackTarget",
                             f"no ReleaseRecord with releaseId {target!r} in tenant {ns!r}"))
            continue
        prev_version = bundle.get("ModelVersion", ns, previous[0].spec.artifacts.model_ref)
        stage_name = (prev_version.resource.spec.stage
                      if prev_version and isinstance(prev_version.resource, ModelVersion)
                      else None)
        if stage_name not in ("STABLE", "DEPRECATED"):
            errors.append(_e("release.rollback-target", rr, "spec.rollbackTarget",
                             f"rollback target {target!r} released version "
                             f"{previous[0].spec.artifacts.model_ref}, which is "
                             f"{stage_name or 'missing'}; a rollback target must have been "
                             "STABLE"))
    for release_id, same in by_id.items():
        first, *later = sorted(same, key=arrival)
        for rr in later:
            errors.append(_e("release.id-unique", rr, "spec.releaseId",
                             f"releaseId {release_id!r} is already used by "
                             f"{ns}/{first.metadata.name}"))
    return errors


def check_bundle(bundle: Bundle, now: datetime) -> list[FieldError]:
    """Every cross-object rule for every tenant in the bundle."""
    errors: list[FieldError] = []
    for first, dup in bundle.duplicates:
        err = _e("meta.duplicate-object", dup.resource, "metadata.name",
                 f"{dup.ref.render()} is defined twice"
                 + (f" (first in {first.doc.file}:{first.doc.line})" if first.doc else ""))
        if dup.doc is not None:
            err = err.at(file=dup.doc.file, line=dup.doc.line_of(["metadata", "name"]),
                         document=dup.doc.index)
        errors.append(err)
    for ns in bundle.tenants():
        errors += check_models(bundle, ns)
        errors += check_versions(bundle, ns)
        errors += check_policies(bundle, ns, now)
        errors += check_releases(bundle, ns)
    return errors
