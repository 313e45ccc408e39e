"""Plain data records the store hands out and takes in (no SQLAlchemy here).

The planner and the workers work on these; only `controller.store.repository`
turns them into rows and back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    model_key: str
    provider: str
    display_name: str
    description: str = ""
    threshold_defaults: dict[str, float] = field(default_factory=dict)
    worker_replicas: int = 1
    generation: int = 0
    spec_hash: str = ""
    review_control_allowed: bool = False
    review_default_decision: str = "PENDING_REVIEW"
    deleted: bool = False
    previous_name: str | None = None  # a rename: this row carries on that model's line
    uid: str | None = None  # metadata.uid of the object that wrote it (None in Git mode)


@dataclass(frozen=True, slots=True)
class VersionRow:
    name: str
    model_name: str
    version: str
    stage: str
    artifact_uri: str
    artifact_format: str
    artifact_sha256: str | None = None
    feature_version: str = "v4"
    threshold_defaults: dict[str, float] = field(default_factory=dict)
    generation: int = 0
    spec_hash: str = ""
    deleted: bool = False
    ef_search: int | None = None  # spec.search.efSearch: HNSW search depth
    previous_name: str | None = None  # a rename: same model and semver under a new name
    uid: str | None = None
    spec: dict[str, Any] | None = None  # the spec applied (None: written before 0012)


@dataclass(frozen=True, slots=True)
class PolicyRow:
    name: str
    model_name: str
    spec: dict[str, Any]
    refresh_seconds: int
    generation: int = 0
    spec_hash: str = ""
    deleted: bool = False
    previous_name: str | None = None  # a rename: this row carries on that policy's line
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class RouteRow:
    version: str
    weight: int
    is_stable: bool
    forced: bool = False
    # the hash slots (0..99) the version holds, placed when published so that jobs stay
    # where they were (`routing.place_routes`); None: laid out by position. Not part of
    # what the routing means, so it takes no part in comparisons.
    slots: tuple[int, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ShadowRoute:
    """spec.shadow as published: `percent` of requests mirrored to `version`."""

    version: str
    percent: int


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    model_name: str
    policy_name: str
    policy_version: int
    source: str
    reason: str
    routes: tuple[RouteRow, ...]
    thresholds: dict[str, Any]
    refresh_seconds: int
    created_at: datetime
    shadow: ShadowRoute | None = None  # 0016: spec.shadow in force

    @property
    def stable_version(self) -> str | None:
        return next((r.version for r in self.routes if r.is_stable), None)


@dataclass(frozen=True)
class ObservedTenant:
    """What the store holds for one tenant, as plain data."""

    models: dict[str, ModelRow]
    versions: dict[str, VersionRow]
    policies: dict[str, PolicyRow]
    snapshots: dict[str, PolicySnapshot]  # by model name
    releases: dict[str, str]  # release_id -> spec_hash
    statuses: dict[tuple[str, str], dict[str, Any]]
    workers: dict[str, list[WorkerState]] = field(default_factory=dict)  # by model name
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # model/version
    analysis: dict[str, list[AnalysisState]] = field(default_factory=dict)  # by model name
    rollbacks: dict[str, RollbackFacts] = field(default_factory=dict)  # by model name
    steps: dict[str, StepState] = field(default_factory=dict)  # canary steps, by model name
    # by model name: version (semver) → jobs bound to it
    bindings: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerState:
    worker_id: str
    model_name: str
    applied_policy_version: int
    degraded: bool
    updated_at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AnalysisState:
    """Canary analysis of one version under one policy spec: keyed by (model, version,
    spec hash), so renaming the policy neither resumes nor resets it, and a new spec starts
    afresh. `failures` and `aborted` derive from the measurements (`evaluation.judge`)."""

    model_name: str
    version: str
    spec_hash: str
    failures: int
    aborted: bool
    measurements: tuple[dict[str, Any], ...] = ()  # oldest first, bounded

    @property
    def latest(self) -> dict[str, Any]:
        """The newest measurement (overall, summary, verdicts, at), or {}."""
        return self.measurements[-1] if self.measurements else {}


@dataclass(frozen=True, slots=True)
class StepState:
    """Where a model's canary plan (`spec.strategy.steps`) stands: keyed by the model, for
    the plan `plan_key` names (`controller.steps.plan_key`); a new plan starts at step 0.
    `phase`: Progressing | Paused | Aborted | ReadyToPromote. `measurements`: the current
    analysis step's (`controller.evaluation.measure`); `verdicts`: what each analysis step,
    or a user's resume/abort/retry, decided; `command`: the id of the last command applied
    (a command is applied once); `held_since`: when a pass first found the walk held (an
    override, the policy-wide analysis aborted), None while it is not."""

    plan_key: str
    index: int
    phase: str
    started_at: datetime
    verdicts: tuple[dict[str, Any], ...] = ()
    measurements: tuple[dict[str, Any], ...] = ()
    command: str = ""
    held_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class RollbackFacts:
    policy_version: int
    source: str
    reason: str
    requested_at: datetime
    effective_at: datetime | None
    refresh_seconds: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    model_name: str
    version: str
    policy_version: int
    route_source: str
    thresholds: dict[str, Any]
    latency_ms: float
    success: bool
    met_threshold: bool
    job_key: str | None = None
    ai_suggestion: str | None = None
    error_code: str | None = None
    run_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime | None = None
    parse_ms: float | None = None
    search_ms: float | None = None
    binding_state: str | None = None  # active | suspended; None: the job has no binding


@dataclass(frozen=True, slots=True)
class ShadowRunRecord:
    """A request mirrored to the shadow version, beside the run (`run_key`) that served it.
    The comparison figures are None when the shadow search failed (`error_code`)."""

    run_key: str
    model_name: str
    shadow_version: str
    overlap_at_10: float | None
    rbo: float | None
    top1_delta: float | None
    served_top1: float | None
    shadow_top1: float | None
    results: list[str]
    latency_ms: float
    error_code: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    name: str
    release_id: str
    git_sha: str
    model_version_name: str
    risk_level: str
    spec: dict[str, Any]
    spec_hash: str
