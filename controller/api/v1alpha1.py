"""The cadml.io/v1alpha1 resources: the single source of truth of the resource schema.

Everything else is generated from these classes by `cadml gen`: the JSON Schemas
in `schemas/`, the CRDs in `crds/` and the chart's copy. Rules one object can
check alone are attached here as CEL (`x-kubernetes-validations`) through
`cel()`; `controller.validation.single` mirrors each of them in Python under the
same rule id, and the test suite proves the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "cadml.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SEMVER = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
SHA256 = r"^[a-f0-9]{64}$"
ARTIFACT_URI = r"^(file|s3|https?|configmap)://.+$"

Stage = Literal["DRAFT", "CANARY", "STABLE", "DEPRECATED"]
STAGES: tuple[str, ...] = ("DRAFT", "CANARY", "STABLE", "DEPRECATED")
ROUTABLE_STAGES: tuple[str, ...] = ("CANARY", "STABLE")
# (from, to) stage moves the contract allows; staying put is always allowed.
STAGE_MOVES: frozenset[tuple[str, str]] = frozenset(
    {
        ("DRAFT", "CANARY"),
        ("CANARY", "STABLE"),
        ("CANARY", "DRAFT"),
        ("DRAFT", "DEPRECATED"),
        ("CANARY", "DEPRECATED"),
        ("STABLE", "DEPRECATED"),
        ("DEPRECATED", "STABLE"),
    }
)
RiskLevel = Literal["low", "medium", "high", "write"]
HIGH_RISK: tuple[str, ...] = ("high", "write")
PENDING_REVIEW = "PENDING_REVIEW"
Metric = Literal["success_rate", "review_override_rate", "p95_latency_ms",
                 "shadow_overlap_at_10"]


def cel(
    rule_id: str,
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    transition: bool = False,
) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry; the rule id leads the message so the
    API server's refusal names the same rule as `cadml validate`."""
    entry: dict[str, Any] = {"rule": rule, "message": f"[{rule_id}] {message}"}
    if field_path:
        entry["fieldPath"] = field_path
    if transition:
        entry["x-cadml-transition"] = True  # stripped from CRDs; marks oldSelf rules
    return entry


def _validations(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(entries)}


class _Object(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Label = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
ThresholdMap = Annotated[
    dict[Annotated[str, Field(max_length=63)], float],
    Field(max_length=32, description="Threshold name → value, e.g. similarity: 0.82."),
]


# ---------------------------------------------------------------- metadata


class ObjectMeta(_Object):
    """The Kubernetes metadata fields a manifest may carry; the namespace is the tenant."""

    name: Name
    namespace: Label | None = Field(
        default=None, description="The tenant. Required in Git (offline validation)."
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Fields the API server fills; accepted so `kubectl get -o yaml` output validates.
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    generate_name: str | None = None
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)
    self_link: str | None = None


# ---------------------------------------------------------------- status, shared


class Condition(_Object):
    """A kstatus-compatible condition."""

    type: str = Field(max_length=64)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=128)
    message: str = Field(default="", max_length=4096)
    last_transition_time: datetime
    observed_generation: int | None = None


class _Status(_Object):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


# ---------------------------------------------------------------- Model


class ReviewSpec(_Object):
    """Human review of AI decisions. It can never be weakened: the AI never controls."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "model.review-control-allowed",
                "self.controlAllowed == false",
                "review.controlAllowed must be false: the AI never takes control",
                field_path=".controlAllowed",
            ),
            cel(
                "model.review-default-decision",
                "self.defaultDecision == 'PENDING_REVIEW'",
                "review.defaultDecision must be PENDING_REVIEW: every AI decision waits "
                "for a human",
                field_path=".defaultDecision",
            ),
        )
    )

    control_allowed: bool = Field(
        default=False,
        description="Must be false: AI output never acts without a human.",
        json_schema_extra={"x-cadml-editor-only": {"enum": [False]}},
    )
    default_decision: str = Field(
        default=PENDING_REVIEW,
        max_length=32,
        description="Decision recorded for every AI run until a reviewer acts.",
        json_schema_extra={"x-cadml-editor-only": {"enum": [PENDING_REVIEW]}},
    )


class ResourceRequirements(_Object):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class WorkersSpec(_Object):
    """The model's similarity workers (a Deployment and a Service owned by the Model)."""

    replicas: int = Field(default=1, ge=0, le=100)
    resources: ResourceRequirements | None = None
    image: str | None = Field(
        default=None, max_length=512, description="Worker image; the operator default if unset."
    )


class ModelSpec(_Object):
    model_key: Label = Field(description="Catalog key of the model, unique per tenant.")
    provider: str = Field(min_length=1, max_length=128)
    display_name: str = Field(min_length=1, max_length=256)
    description: str = Field(default="", max_length=4096)
    threshold_defaults: ThresholdMap = Field(default_factory=dict)
    review: ReviewSpec = Field(default_factory=ReviewSpec)
    workers: WorkersSpec = Field(default_factory=WorkersSpec)


class ModelStatus(_Status):
    stable_version: str | None = None
    canary_versions: list[str] = Field(default_factory=list)
    active_policy: str | None = None
    policy_version: int | None = None
    route_source: str | None = Field(
        default=None, description="What routes the model now: policy, override, rollback, "
        "analysis-abort, expired, or default (no RolloutPolicy: all traffic on STABLE).")
    routing_summary: str | None = Field(default=None, description="e.g. '1.2.0=90,1.3.0=10'.")
    workers_ready: str | None = Field(default=None, description="Ready workers, 'n/m'.")
    workers_error: str | None = Field(
        default=None, description="What the API server refused of the worker Deployment or "
        "Service (tried again every repair interval); absent once both are applied.")
    workers_applied: str | None = Field(
        default=None, description="Workers that applied the current policyVersion, 'n/m'."
    )


class Model(_Object):
    """A catalog entry: one model of a tenant and its similarity workers."""

    kind_name: ClassVar[str] = "Model"
    plural: ClassVar[str] = "models"
    short_names: ClassVar[tuple[str, ...]] = ("cmodel",)

    api_version: Literal["cadml.io/v1alpha1"]
    kind: Literal["Model"]
    metadata: ObjectMeta
    spec: ModelSpec
    status: ModelStatus | None = None


# ---------------------------------------------------------------- ModelVersion


class ArtifactSpec(_Object):
    uri: str = Field(max_length=2048, pattern=ARTIFACT_URI)
    sha256: str | None = Field(
        default=None, pattern=SHA256, description="Required for CANARY and STABLE."
    )
    format: Literal["faiss-index", "npz", "pickle"]


class SearchSpec(_Object):
    """How the worker searches this version's index; tuning that needs no rebuild."""

    ef_search: int | None = Field(
        default=None, ge=16, le=4096,
        description="HNSW search depth (faiss efSearch) for an approximate (HNSW) index "
        "built with `cadml index build --kind hnsw`: higher finds more true neighbours, "
        "slower. Ignored by exact (flat) indexes. Unset: the worker's --hnsw-ef-search, "
        "else the value stored in the artifact.",
    )


class ModelVersionSpec(_Object):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "version.search-needs-index",
                "!has(self.search) || self.artifact.format == 'faiss-index'",
                "search settings apply only to a faiss-index artifact",
                field_path=".search",
            ),
            cel(
                "version.sha256-required",
                "!(self.stage in ['CANARY', 'STABLE']) || has(self.artifact.sha256)",
                "artifact.sha256 is required for CANARY and STABLE versions",
                field_path=".artifact.sha256",
            ),
            cel(
                "version.stage-transition",
                "self.stage == oldSelf.stage"
                " || (oldSelf.stage == 'DRAFT' && self.stage in ['CANARY', 'DEPRECATED'])"
                " || (oldSelf.stage == 'CANARY' && self.stage in ['STABLE', 'DRAFT', 'DEPRECATED'])"
                " || (oldSelf.stage == 'STABLE' && self.stage == 'DEPRECATED')"
                " || (oldSelf.stage == 'DEPRECATED' && self.stage == 'STABLE')",
                "stage move not allowed; allowed: DRAFT→CANARY, CANARY→STABLE, CANARY→DRAFT, "
                "DRAFT/CANARY/STABLE→DEPRECATED, DEPRECATED→STABLE",
                field_path=".stage",
                transition=True,
            ),
            cel(
                "version.identity-immutable",
                "self.modelRef == oldSelf.modelRef && self.version == oldSelf.version",
                "modelRef and version identify a version and cannot change; create a new "
                "ModelVersion instead",
                transition=True,
            ),
            cel(
                "version.artifact-immutable",
                "!(oldSelf.stage in ['CANARY', 'STABLE']) || self.artifact == oldSelf.artifact",
                "the artifact of a version that has served traffic (CANARY/STABLE) cannot "
                "change; publish a new version",
                field_path=".artifact",
                transition=True,
            ),
        )
    )

    model_ref: Name = Field(description="metadata.name of the Model in the same namespace.")
    version: str = Field(max_length=64, pattern=SEMVER, description="Semantic version.")
    stage: Stage
    artifact: ArtifactSpec
    feature_version: Literal["v1", "v2", "v3", "v4"] = Field(
        default="v4", description="DXF feature extractor; v4 = 24 dimensions."
    )
    threshold_defaults: ThresholdMap = Field(default_factory=dict)
    evaluation_ref: str | None = Field(default=None, max_length=253)
    search: SearchSpec | None = Field(
        default=None, description="Search tuning for this version (approximate indexes)."
    )


class ModelVersionStatus(_Status):
    artifact_verified: bool | None = None
    serving_weight: int | None = Field(default=None, description="Percent of traffic now.")


class ModelVersion(_Object):
    """One version of a model: its artifact and its stage in the release lifecycle."""

    kind_name: ClassVar[str] = "ModelVersion"
    plural: ClassVar[str] = "modelversions"
    short_names: ClassVar[tuple[str, ...]] = ("mv", "cmv")

    api_version: Literal["cadml.io/v1alpha1"]
    kind: Literal["ModelVersion"]
    metadata: ObjectMeta
    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None


# ---------------------------------------------------------------- RolloutPolicy


class WeightEntry(_Object):
    version: str = Field(max_length=64, description="spec.version of a ModelVersion.")
    weight: int = Field(ge=0, le=100, description="Percent of traffic.")


class OverrideSpec(_Object):
    version: str = Field(max_length=64)
    reason: str = Field(min_length=1, max_length=1024)
    until: datetime | None = None


# ---- shadow comparison (issue 16): one block, kept apart from the canary steps
class ShadowSpec(_Object):
    """Mirror a share of requests to a version after the answer is sent, and compare."""

    version: str = Field(max_length=64, description=(
        "spec.version of a CANARY version, or of a DRAFT version whose artifact has a "
        "sha256; its answers are recorded as shadow runs, never served."))
    percent: int = Field(ge=1, le=100, description=(
        "Percent of requests mirrored (deterministic by job id)."))


SHADOW_CEL = cel(
    "policy.shadow-not-full-weight",
    "!has(self.shadow) || !self.weights.exists(w, w.version == self.shadow.version && "
    "w.weight == 100)",
    "the shadow version takes all the traffic: there is nothing to compare it with; shadow "
    "another version, or give this one less weight",
    field_path=".shadow.version",
)


class MetricBound(_Object):
    name: Metric
    min: float | None = None
    max: float | None = None


class AnalysisSpec(_Object):
    metrics: list[MetricBound] = Field(min_length=1, max_length=8)
    interval_seconds: int = Field(default=60, ge=5, le=86400)
    window_seconds: int = Field(default=600, ge=10, le=604800)
    min_sample_size: int = Field(default=50, ge=1)
    failure_limit: int = Field(default=1, ge=1, le=100)


# ---- canary steps (issue 16): Git holds the plan, the controller walks it in status
DURATION = r"^[1-9][0-9]{0,5}(s|m|h)$"


class PauseSpec(_Object):
    duration: str | None = Field(
        default=None, pattern=DURATION,
        description="How long to stay, e.g. 10m; without it the step waits for "
                    "`cadml rollout resume`.")


class StepSpec(_Object):
    """One step of a canary plan: exactly one of setWeight, pause and analysis."""

    # at most 99: a canary takes all the traffic only by a reviewed promotion in Git (or
    # an override); the store refuses a canary route at 100 % otherwise
    set_weight: int | None = Field(default=None, ge=0, le=99,
                                   description="The canary's percent from this step on.")
    pause: PauseSpec | None = None
    analysis: AnalysisSpec | None = Field(
        default=None, description="Judge the canary at the weight in force; a pass moves "
                                  "on, failureLimit failed measurements in a row abort.")


class StrategySpec(_Object):
    steps: list[StepSpec] = Field(
        min_length=1, max_length=32,
        description="Walked in order by the controller (status.currentStepIndex); the "
                    "spec's weights are the split reached after the last step.")


STEP_RULES = (
    cel("policy.steps-one-canary",
        "!has(self.strategy) || self.weights.size() == 2",
        "strategy.steps walk one canary at a time: weights must name the STABLE version "
        "and exactly one canary (their final split after the last step)",
        field_path=".strategy.steps"),
    cel("policy.step-one-action",
        "!has(self.strategy) || self.strategy.steps.all(s, "
        "(has(s.setWeight) ? 1 : 0) + (has(s.pause) ? 1 : 0) + (has(s.analysis) ? 1 : 0) "
        "== 1)",
        "each step must set exactly one of setWeight, pause or analysis",
        field_path=".strategy.steps"),
)


class RolloutPolicySpec(_Object):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            *STEP_RULES,
            cel(
                "policy.weights-sum-100",
                "self.weights.map(w, w.weight).sum() == 100",
                "weights must sum to exactly 100",
                field_path=".weights",
            ),
            cel(
                "policy.canary-weight-range",
                "self.weights.filter(w, w.weight < 1 || w.weight > 99).size() <= 1",
                "every canary weight must be within 1..99; only the STABLE version may take "
                "0 or 100",
                field_path=".weights",
            ),
            cel(
                "policy.versions-unique",
                "self.weights.all(w, self.weights.exists_one(x, x.version == w.version))",
                "each version may appear only once in weights",
                field_path=".weights",
            ),
            cel(
                "policy.validity-window",
                "!has(self.validFrom) || !has(self.validUntil) || self.validFrom < self.validUntil",
                "validFrom must be before validUntil",
                field_path=".validUntil",
            ),
            cel(
                "policy.model-ref-immutable",
                "self.modelRef == oldSelf.modelRef",
                "modelRef cannot change; create a new RolloutPolicy instead",
                field_path=".modelRef",
                transition=True,
            ),
            SHADOW_CEL,
        )
    )

    model_ref: Name
    weights: list[WeightEntry] = Field(min_length=1, max_length=10)
    thresholds: ThresholdMap = Field(default_factory=dict)
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    refresh_seconds: int = Field(
        default=5, ge=1, le=3600, description="How often workers re-read the policy."
    )
    override: OverrideSpec | None = Field(
        default=None, description="A manual forced version; wins over every other routing."
    )
    analysis: AnalysisSpec | None = None
    strategy: StrategySpec | None = Field(
        default=None, description="Canary steps; `weights` is the split after the last step.")
    shadow: ShadowSpec | None = Field(default=None, description=(
        "Shadow comparison: mirror a share of requests to a version and record how its "
        "results differ from the served ones (`cadml compare --shadow`)."))


class RoutingEntry(_Object):
    version: str
    weight: int
    stage: str | None = None


class VersionEvaluation(_Object):
    version: str
    window: str
    success_rate: float | None = None
    review_override_rate: float | None = None
    p95_latency_ms: float | None = None
    sample_size: int = 0
    reviewed_sample_size: int = 0


class AnalysisVerdict(_Object):
    """One metric bound of the automatic canary analysis, judged on a canary version."""

    version: str
    metric: str
    result: Literal["Pass", "Fail", "InsufficientData"]
    observed: float | None = None
    bound: str
    sample_size: int
    window_seconds: int


class RollbackRecord(_Object):
    requested_at: datetime
    effective_at: datetime | None = None
    cycles: float | None = None


class SuspendedBindings(_Object):
    """Jobs bound to a version the effective routing does not route (after a rollback, an
    abort, an override or a deprecation): served by the policy, the binding kept until the
    routing routes its version again."""

    count: int = Field(default=0, ge=0, description="Suspended bindings in all.")
    versions: dict[str, int] = Field(
        default_factory=dict, description="version → jobs whose binding to it is suspended.")


class ShadowStatus(_Object):
    version: str
    percent: int
    in_force: bool = Field(description="Mirrored with the routing published now.")
    reason: str | None = Field(default=None, description="Why it is not mirrored.")


class RolloutPolicyStatus(_Status):
    policy_version: int | None = None
    routing: list[RoutingEntry] = Field(default_factory=list)
    routing_summary: str | None = Field(default=None, description="e.g. '1.2.0=90,1.3.0=10'.")
    effective_thresholds: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="name → {value, source}."
    )
    evaluation: list[VersionEvaluation] = Field(default_factory=list)
    analysis: list[AnalysisVerdict] = Field(default_factory=list)
    aborted_versions: list[str] = Field(
        default_factory=list, description="Canaries the analysis aborted for this spec.")
    workers_applied: str | None = None
    last_rollback: RollbackRecord | None = None
    # ---- canary steps (issue 16)
    current_step_index: int | None = Field(
        default=None, description="The step being walked; len(steps) once all are done.")
    step_phase: Literal["Progressing", "Paused", "Aborted", "ReadyToPromote"] | None = None
    step_started_at: datetime | None = None
    canary_weight: int | None = Field(default=None, description="The canary's effective percent.")
    step_verdicts: list[dict[str, Any]] = Field(
        default_factory=list, description="What each analysis step (or a user) decided.")
    shadow: ShadowStatus | None = Field(
        default=None, description="spec.shadow, and whether it is mirrored now (issue 16).")
    suspended_bindings: SuspendedBindings | None = Field(
        default=None, description="Bindings the effective routing suspends, as of the last "
        "reconcile (`cadml status` also shows them as published).")


class RolloutPolicy(_Object):
    """How a model's traffic is split between its STABLE and CANARY versions."""

    kind_name: ClassVar[str] = "RolloutPolicy"
    plural: ClassVar[str] = "rolloutpolicies"
    short_names: ClassVar[tuple[str, ...]] = ("rp", "crp")

    api_version: Literal["cadml.io/v1alpha1"]
    kind: Literal["RolloutPolicy"]
    metadata: ObjectMeta
    spec: RolloutPolicySpec
    status: RolloutPolicyStatus | None = None


# ---------------------------------------------------------------- ReleaseRecord


class ReleaseArtifacts(_Object):
    model_ref: Name = Field(description="metadata.name of the ModelVersion released.")
    prompt_ref: str | None = Field(default=None, max_length=256)
    tool_schema_ref: str | None = Field(default=None, max_length=256)
    kb_index_ref: str | None = Field(default=None, max_length=256)


class GateEvidence(_Object):
    """Facts the release gates C1..C5 are judged on."""

    tool_schema_from: str | None = Field(default=None, max_length=64, pattern=SEMVER)
    tool_schema_to: str | None = Field(default=None, max_length=64, pattern=SEMVER)
    migration_note: str | None = Field(default=None, max_length=4096)
    eval_score: float | None = None
    eval_threshold: float | None = None
    injection_success_rate: float | None = Field(default=None, ge=0, le=1)
    cost_per_case_delta_percent: float | None = None
    business_approver: str | None = Field(default=None, max_length=256)
    hitl_proof_uri: str | None = Field(default=None, max_length=2048)


class ReleaseRecordSpec(_Object):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "release.immutable",
                "self == oldSelf",
                "a ReleaseRecord is immutable; create a new record instead",
                transition=True,
            ),
            cel(
                "release.approvers-high-risk",
                "!(self.riskLevel in ['high', 'write']) || self.approvers.size() >= 2",
                "riskLevel high or write needs at least two approvers",
                field_path=".approvers",
            ),
            cel(
                "release.approvers-distinct",
                "self.approvers.all(a, self.approvers.exists_one(b, b == a))",
                "each approver may be listed only once",
                field_path=".approvers",
            ),
        )
    )

    release_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    git_sha: str = Field(pattern=r"^[0-9a-f]{7,40}$")
    artifacts: ReleaseArtifacts
    eval_set_ref: str = Field(min_length=1, max_length=256)
    eval_report_uri: str = Field(min_length=1, max_length=2048)
    approvers: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=20
    )
    canary_percent: int = Field(ge=0, le=100)
    rollback_target: str | None = Field(
        default=None, max_length=128, description="releaseId of the previous stable release."
    )
    change_summary: str = Field(min_length=1, max_length=4096)
    data_snapshot_id: str | None = Field(default=None, max_length=256)
    risk_level: RiskLevel
    evidence: GateEvidence = Field(default_factory=GateEvidence)


class GateResult(_Object):
    gate: Literal["C1", "C2", "C3", "C4", "C5"]
    verdict: Literal["Pass", "Fail", "Unknown"]
    reason: str


class ReleaseRecordStatus(_Status):
    gates: list[GateResult] = Field(default_factory=list)
    gate_summary: str | None = Field(default=None, description="e.g. 'pass 5/5'.")


class ReleaseRecord(_Object):
    """An immutable record of one release: what shipped, who approved it, how to undo it."""

    kind_name: ClassVar[str] = "ReleaseRecord"
    plural: ClassVar[str] = "releaserecords"
    short_names: ClassVar[tuple[str, ...]] = ("rr", "crr")

    api_version: Literal["cadml.io/v1alpha1"]
    kind: Literal["ReleaseRecord"]
    metadata: ObjectMeta
    spec: ReleaseRecordSpec
    status: ReleaseRecordStatus | None = None


Resource = Model | ModelVersion | RolloutPolicy | ReleaseRecord
KINDS: dict[str, type[Model] | type[ModelVersion] | type[RolloutPolicy] | type[ReleaseRecord]] = {
    "Model": Model,
    "ModelVersion": ModelVersion,
    "RolloutPolicy": RolloutPolicy,
    "ReleaseRecord": ReleaseRecord,
}
