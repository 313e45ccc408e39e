"""Single-object rules in Python: the mirror of the CRDs' CEL rules, same ids and messages.

Purely computational, no side effects. Each mirror returns True when the object
satisfies the rule; `check_object` / `check_transition` turn failures into
FieldErrors using the rule's own message and fieldPath from the schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from controller.api.celrules import cel_rules
from controller.api.v1alpha1 import (
    HIGH_RISK,
    PENDING_REVIEW,
    ROUTABLE_STAGES,
    STAGE_MOVES,
    Model,
    ModelVersion,
    ReleaseRecord,
    Resource,
    RolloutPolicy,
)
from controller.findings import FieldError
from controller.validation.parse import ref_of


def _review_control(r: Resource) -> bool:
    return not (isinstance(r, Model) and r.spec.review.control_allowed)


def _review_decision(r: Resource) -> bool:
    return not isinstance(r, Model) or r.spec.review.default_decision == PENDING_REVIEW


def _sha_required(r: Resource) -> bool:
    if not isinstance(r, ModelVersion):
        return True
    return r.spec.stage not in ROUTABLE_STAGES or r.spec.artifact.sha256 is not None


def _search_needs_index(r: Resource) -> bool:
    if not isinstance(r, ModelVersion):
        return True
    return r.spec.search is None or r.spec.artifact.format == "faiss-index"


def _weights_sum(r: Resource) -> bool:
    return not isinstance(r, RolloutPolicy) or sum(w.weight for w in r.spec.weights) == 100


def _canary_range(r: Resource) -> bool:
    if not isinstance(r, RolloutPolicy):
        return True
    return sum(1 for w in r.spec.weights if not 1 <= w.weight <= 99) <= 1


def _versions_unique(r: Resource) -> bool:
    if not isinstance(r, RolloutPolicy):
        return True
    counts = Counter(w.version for w in r.spec.weights)
    return all(n == 1 for n in counts.values())


def _validity_window(r: Resource) -> bool:
    if not isinstance(r, RolloutPolicy):
        return True
    start, end = r.spec.valid_from, r.spec.valid_until
    return start is None or end is None or start < end


def _steps_one_canary(r: Resource) -> bool:
    return not isinstance(r, RolloutPolicy) or r.spec.strategy is None \
        or len(r.spec.weights) == 2


def _step_one_action(r: Resource) -> bool:
    if not isinstance(r, RolloutPolicy) or r.spec.strategy is None:
        return True
    return all(sum(x is not None for x in (s.set_weight, s.pause, s.analysis)) == 1
               for s in r.spec.strategy.steps)


def _shadow_not_full_weight(r: Resource) -> bool:
    if not isinstance(r, RolloutPolicy) or r.spec.shadow is None:
        return True
    shadow = r.spec.shadow.version
    return not any(w.version == shadow and w.weight == 100 for w in r.spec.weights)


def _approvers_high_risk(r: Resource) -> bool:
    if not isinstance(r, ReleaseRecord):
        return True
    return r.spec.risk_level not in HIGH_RISK or len(r.spec.approvers) >= 2


def _approvers_distinct(r: Resource) -> bool:
    return not isinstance(r, ReleaseRecord) or len(set(r.spec.approvers)) == len(r.spec.approvers)


def _stage_transition(old: Resource, new: Resource) -> bool:
    if not (isinstance(old, ModelVersion) and isinstance(new, ModelVersion)):
        return True
    a, b = old.spec.stage, new.spec.stage
    return a == b or (a, b) in STAGE_MOVES


def _identity_immutable(old: Resource, new: Resource) -> bool:
    if not (isinstance(old, ModelVersion) and isinstance(new, ModelVersion)):
        return True
    return (old.spec.model_ref, old.spec.version) == (new.spec.model_ref, new.spec.version)


def _artifact_immutable(old: Resource, new: Resource) -> bool:
    if not (isinstance(old, ModelVersion) and isinstance(new, ModelVersion)):
        return True
    return old.spec.stage not in ROUTABLE_STAGES or old.spec.artifact == new.spec.artifact


def _policy_model_immutable(old: Resource, new: Resource) -> bool:
    if not (isinstance(old, RolloutPolicy) and isinstance(new, RolloutPolicy)):
        return True
    return old.spec.model_ref == new.spec.model_ref


def _release_immutable(old: Resource, new: Resource) -> bool:
    if not (isinstance(old, ReleaseRecord) and isinstance(new, ReleaseRecord)):
        return True
    return old.spec == new.spec


OBJECT_RULES: dict[str, Callable[[Resource], bool]] = {
    "model.review-control-allowed": _review_control,
    "model.review-default-decision": _review_decision,
    "version.sha256-required": _sha_required,
    "version.search-needs-index": _search_needs_index,
    "policy.weights-sum-100": _weights_sum,
    "policy.canary-weight-range": _canary_range,
    "policy.versions-unique": _versions_unique,
    "policy.validity-window": _validity_window,
    "policy.steps-one-canary": _steps_one_canary,
    "policy.step-one-action": _step_one_action,
    "policy.shadow-not-full-weight": _shadow_not_full_weight,
    "release.approvers-high-risk": _approvers_high_risk,
    "release.approvers-distinct": _approvers_distinct,
}

TRANSITION_RULES: dict[str, Callable[[Resource, Resource], bool]] = {
    "version.stage-transition": _stage_transition,
    "version.identity-immutable": _identity_immutable,
    "version.artifact-immutable": _artifact_immutable,
    "policy.model-ref-immutable": _policy_model_immutable,
    "release.immutable": _release_immutable,
}


def check_object(resource: Resource) -> list[FieldError]:
    """Every single-object rule the CRD's CEL checks on create and update."""
    errors = []
    for rule in cel_rules(resource.kind):
        if rule.transition:
            continue
        if not OBJECT_RULES[rule.rule_id](resource):
            errors.append(
                FieldError(rule.rule_id, rule.error_path, rule.message, obj=ref_of(resource))
            )
    return errors


def check_transition(old: Resource, new: Resource) -> list[FieldError]:
    """The CRD's transition rules (those using oldSelf), checked on update."""
    errors = []
    for rule in cel_rules(new.kind):
        if rule.transition and not TRANSITION_RULES[rule.rule_id](old, new):
            errors.append(FieldError(rule.rule_id, rule.error_path, rule.message, obj=ref_of(new)))
    return errors
