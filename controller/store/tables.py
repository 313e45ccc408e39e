"""The runtime store's tables (SQLAlchemy Core), as the Alembic head revision leaves them.

Every row carries `tenant_id`; every foreign key between tenant-owned rows is
composite and includes it, so no row can point into another tenant. Rules live
in the database too: CHECKs for stages, review, weights and ranges, and a
partial unique index for one STABLE version per (tenant_id, model_key).
A test compares this metadata with the migrated database, so the two cannot drift.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
STAGE_SQL = "stage IN ('DRAFT', 'CANARY', 'STABLE', 'DEPRECATED')"
REVIEW_SQL = "review_status IN ('PENDING_REVIEW', 'APPROVED', 'REJECTED')"
ROLLBACK_SQL = "source IN ('rollback', 'analysis-abort')"  # snapshots that roll back


def _tenant() -> Column[str]:
    return Column("tenant_id", String(63), nullable=False)


def _ts(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


model_catalog = Table(
    "model_catalog", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("name", String(253), nullable=False),
    Column("model_key", String(63), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("display_name", String(256), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("threshold_defaults", JSON, nullable=False),
    Column("review_control_allowed", Boolean, nullable=False, server_default=text("false")),
    Column("review_default_decision", String(32), nullable=False,
           server_default="PENDING_REVIEW"),
    Column("worker_replicas", Integer, nullable=False, server_default="1"),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("spec_hash", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("uid", String(64)),  # 0012: the object incarnation that wrote the row
    _ts("created_at"), _ts("updated_at"),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "name"),
    UniqueConstraint("tenant_id", "model_key"),
    CheckConstraint("review_control_allowed = false", name="review_never_controls"),
    CheckConstraint("review_default_decision = 'PENDING_REVIEW'", name="review_pending"),
    CheckConstraint("worker_replicas >= 0", name="replicas_nonneg"),
)

model_version = Table(
    "model_version", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("model_id", Id, nullable=False),
    Column("model_key", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("version", String(64), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("artifact_uri", String(2048), nullable=False),
    Column("artifact_sha256", String(64), nullable=True),
    Column("artifact_format", String(16), nullable=False),
    Column("feature_version", String(4), nullable=False),
    Column("threshold_defaults", JSON, nullable=False),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("spec_hash", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("uid", String(64)),  # 0012: the object incarnation that wrote the row
    Column("spec", JSON),  # 0012: the spec last applied (transition rules)
    _ts("created_at"), _ts("updated_at"),
    Column("ef_search", Integer, nullable=True),  # 0007: spec.search.efSearch
    # 0017: jobs bound to this version now (kept by bind/unbind; read by every pass)
    Column("bound_jobs", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "name"),
    UniqueConstraint("tenant_id", "model_id", "version"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    CheckConstraint(STAGE_SQL, name="stage"),
    CheckConstraint("artifact_format IN ('faiss-index', 'npz', 'pickle')", name="format"),
    CheckConstraint("feature_version IN ('v1', 'v2', 'v3', 'v4')", name="feature_version"),
    CheckConstraint("stage NOT IN ('CANARY', 'STABLE') OR artifact_sha256 IS NOT NULL",
                    name="sha256_when_routable"),
    Index("uq_model_version_one_stable", "tenant_id", "model_key", unique=True,
          sqlite_where=text("stage = 'STABLE'"), postgresql_where=text("stage = 'STABLE'")),
)

model_rollout_policy = Table(
    "model_rollout_policy", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("model_id", Id, nullable=False),
    Column("name", String(253), nullable=False),
    Column("policy_version", Integer, nullable=False, server_default="0"),
    Column("spec", JSON, nullable=False),
    Column("refresh_seconds", Integer, nullable=False, server_default="5"),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("spec_hash", String(64), nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("uid", String(64)),  # 0012: the object incarnation that wrote the row
    _ts("created_at"), _ts("updated_at"),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "name"),
    UniqueConstraint("tenant_id", "model_id"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    CheckConstraint("policy_version >= 0", name="policy_version_nonneg"),
    CheckConstraint("refresh_seconds BETWEEN 1 AND 3600", name="refresh_range"),
)

policy_snapshot = Table(
    "policy_snapshot", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("policy_id", Id, nullable=False),
    Column("model_id", Id, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("source", String(32), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("thresholds", JSON, nullable=False),
    Column("refresh_seconds", Integer, nullable=False),
    _ts("created_at"),
    # 0018: spec.shadow in force (NULL: no shadow comparison)
    Column("shadow_version", String(64), nullable=True),
    Column("shadow_percent", Integer, nullable=True),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "policy_id", "policy_version"),
    ForeignKeyConstraint(["tenant_id", "policy_id"],
                         ["model_rollout_policy.tenant_id", "model_rollout_policy.id"]),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    CheckConstraint("source IN ('policy', 'override', 'rollback', 'analysis-abort', 'expired')",
                    name="source"),
    CheckConstraint("policy_version >= 1", name="policy_version_positive"),
    # 0009: a model's newest rollback is one seek, however many snapshots it has
    Index("ix_policy_snapshot_rollbacks", "tenant_id", "model_id", "created_at", "id",
          sqlite_where=text(ROLLBACK_SQL), postgresql_where=text(ROLLBACK_SQL)),
)

policy_route = Table(
    "policy_route", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("snapshot_id", Id, nullable=False),
    Column("model_version_id", Id, nullable=False),
    Column("version", String(64), nullable=False),
    Column("weight", Integer, nullable=False),
    Column("is_stable", Boolean, nullable=False),
    # a manual override may force a canary to 100 %; nothing else may
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    Column("slots", JSON, nullable=True),  # 0013: hash slots held; NULL: by position
    UniqueConstraint("tenant_id", "snapshot_id", "model_version_id"),
    ForeignKeyConstraint(["tenant_id", "snapshot_id"],
                         ["policy_snapshot.tenant_id", "policy_snapshot.id"]),
    ForeignKeyConstraint(["tenant_id", "model_version_id"],
                         ["model_version.tenant_id", "model_version.id"]),
    CheckConstraint("weight BETWEEN 0 AND 100", name="weight_range"),
    CheckConstraint("is_stable OR forced OR weight BETWEEN 1 AND 99", name="canary_weight"),
)

release_record = Table(
    "release_record", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("name", String(253), nullable=False),
    Column("release_id", String(128), nullable=False),
    Column("git_sha", String(40), nullable=False),
    Column("model_version_name", String(253), nullable=False),
    Column("risk_level", String(8), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    _ts("created_at"),
    UniqueConstraint("tenant_id", "release_id"),
    Index("ix_release_record_tenant_id_name", "tenant_id", "name"),  # 0011: reusable names
    CheckConstraint("risk_level IN ('low', 'medium', 'high', 'write')", name="risk_level"),
)

ai_analysis_jobs = Table(
    "ai_analysis_jobs", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("job_key", String(256), nullable=False),
    Column("model_version_id", Id, nullable=False),
    Column("runtime_snapshot", JSON, nullable=False),
    _ts("created_at"),
    # 0009: rises with every bind in the tenant, so workers read only the changes
    Column("updated_seq", BigInteger, nullable=False),
    # 0013: a deleted binding is a tombstone, so workers reading changes see it go
    Column("unbound", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "job_key"),
    Index("ix_ai_analysis_jobs_changes", "tenant_id", "updated_seq"),
    ForeignKeyConstraint(["tenant_id", "model_version_id"],
                         ["model_version.tenant_id", "model_version.id"]),
)

model_run = Table(
    "model_run", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("run_key", String(64), nullable=False),
    Column("model_id", Id, nullable=False),
    Column("model_version_id", Id, nullable=False),
    Column("job_key", String(256), nullable=True),
    Column("policy_version", Integer, nullable=False),
    Column("route_source", String(16), nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("decision", String(32), nullable=False),
    Column("ai_suggestion", String(32), nullable=True),
    Column("review_status", String(16), nullable=False, server_default="PENDING_REVIEW"),
    Column("human_decision", String(32), nullable=True),
    Column("reviewer", String(256), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("met_threshold", Boolean, nullable=False),
    Column("error_code", String(64), nullable=True),
    _ts("created_at"),
    _ts("reviewed_at", nullable=True),
    # 0014: the reviewer's explicit agreement with the AI's suggestion; latency breakdown
    Column("human_agrees", Boolean, nullable=True),
    Column("parse_ms", Float, nullable=True),
    Column("search_ms", Float, nullable=True),
    Column("binding_state", String(16), nullable=True),  # 0015: active | suspended
    UniqueConstraint("tenant_id", "run_key"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    ForeignKeyConstraint(["tenant_id", "model_version_id"],
                         ["model_version.tenant_id", "model_version.id"]),
    CheckConstraint(REVIEW_SQL, name="review_status"),
    CheckConstraint("decision = 'PENDING_REVIEW'", name="ai_never_decides"),
    CheckConstraint("route_source IN ('override', 'binding', 'policy', 'default')",
                    name="route_source"),
    CheckConstraint("latency_ms >= 0", name="latency_nonneg"),
    CheckConstraint("policy_version >= 0", name="policy_version_nonneg"),
    CheckConstraint("(review_status = 'PENDING_REVIEW') = (reviewer IS NULL)",
                    name="reviewed_has_reviewer"),
    Index("ix_model_run_version_time", "tenant_id", "model_version_id", "created_at"),
    # 0009: the first run that obeyed a rollback, scanning forward from its publication
    Index("ix_model_run_model_time", "tenant_id", "model_id", "created_at", "policy_version"),
)

evaluation = Table(
    "evaluation", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("model_version_id", Id, nullable=False),
    Column("job_key", String(256), nullable=False, server_default=""),
    _ts("window_start"), _ts("window_end"),
    Column("success_rate", Float, nullable=True),
    Column("review_override_rate", Float, nullable=True),
    Column("p95_latency_ms", Float, nullable=True),
    Column("sample_size", Integer, nullable=False),
    Column("reviewed_sample_size", Integer, nullable=False),
    _ts("created_at"),
    UniqueConstraint("tenant_id", "model_version_id", "job_key", "window_start", "window_end"),
    ForeignKeyConstraint(["tenant_id", "model_version_id"],
                         ["model_version.tenant_id", "model_version.id"]),
    CheckConstraint("success_rate IS NULL OR success_rate BETWEEN 0 AND 1", name="success_rate"),
    CheckConstraint("review_override_rate IS NULL OR review_override_rate BETWEEN 0 AND 1",
                    name="override_rate"),
    CheckConstraint("sample_size >= 0 AND reviewed_sample_size BETWEEN 0 AND sample_size",
                    name="samples"),
    CheckConstraint("window_start < window_end", name="window"),
    # 0009: the newest evaluation of a version is one seek
    Index("ix_evaluation_latest", "tenant_id", "model_version_id", "job_key", "window_end",
          "id"),
)

audit_event = Table(
    "audit_event", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("seq", BigInteger, nullable=False),
    Column("at", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object_kind", String(64), nullable=False),
    Column("object_name", String(253), nullable=False),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("tenant_id", "seq"),
    CheckConstraint("seq >= 1", name="seq_positive"),
)

tenant = Table(  # 0008: names every role may list; rows stay behind row-level security
    "tenant", metadata,
    Column("tenant_id", String(63), primary_key=True),
    _ts("created_at"),
)

tenant_role = Table(  # 0013: a login role bound to one tenant (`cadml db grant-tenant`)
    "tenant_role", metadata,
    Column("role_name", String(63), primary_key=True),
    Column("tenant_id", String(63), nullable=False),
    _ts("created_at"),
)

audit_head = Table(
    "audit_head", metadata,
    Column("tenant_id", String(63), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

schedule_tick = Table(
    "schedule_tick", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _tenant(),
    Column("window_key", String(128), nullable=False),
    Column("result", JSON, nullable=False),
    _ts("created_at"),
    UniqueConstraint("tenant_id", "window_key"),
)

worker_state = Table(
    "worker_state", metadata,
    Column("tenant_id", String(63), primary_key=True),
    Column("worker_id", String(253), primary_key=True),
    Column("model_id", Id, nullable=False),
    Column("applied_policy_version", Integer, nullable=False),
    Column("degraded", Boolean, nullable=False, server_default=text("false")),
    Column("detail", JSON, nullable=False),
    _ts("updated_at"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    Index("ix_worker_state_updated", "tenant_id", "updated_at"),  # 0009: expiry
)

object_status = Table(
    "object_status", metadata,
    Column("tenant_id", String(63), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("status", JSON, nullable=False),
    _ts("updated_at"),
)

analysis_state = Table(
    "analysis_state", metadata,
    # one canary version judged under one policy spec; a rename changes neither key
    Column("tenant_id", String(63), primary_key=True),
    Column("model_id", Id, primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("spec_hash", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),  # derived from the measurements
    Column("aborted", Boolean, nullable=False, server_default=text("false")),
    Column("measurements", JSON, nullable=False),  # the last few, oldest first
    _ts("updated_at"),
    CheckConstraint("failures >= 0", name="failures_nonneg"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
)

rollout_step = Table(
    "rollout_step", metadata,
    # where a model's canary plan (a RolloutPolicy's spec.strategy.steps) stands; keyed by
    # the model like analysis_state, so renaming the policy keeps the progress
    Column("tenant_id", String(63), primary_key=True),
    Column("model_id", Id, primary_key=True),
    Column("plan_key", String(64), nullable=False),  # controller.steps.plan_key
    Column("step_index", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("verdicts", JSON, nullable=False),
    Column("measurements", JSON, nullable=False),  # the current analysis step's
    Column("command", String(128), nullable=False, server_default=text("''")),
    Column("held_since", DateTime(timezone=True), nullable=True),  # 0019; NULL: not held
    _ts("updated_at"),
    CheckConstraint("step_index >= 0", name="step_index_nonneg"),
    CheckConstraint("phase IN ('Progressing', 'Paused', 'Aborted', 'ReadyToPromote')",
                    name="phase"),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
)

shadow_run = Table(  # 0018: a mirrored request's comparison, beside the run that served it
    "shadow_run", metadata,
    Column("tenant_id", String(63), primary_key=True),
    Column("run_key", String(64), primary_key=True),  # the served run
    Column("model_id", Id, nullable=False),
    Column("model_version_id", Id, nullable=False),  # the shadow version
    Column("overlap_at_10", Float, nullable=True),  # NULL: the shadow search failed
    Column("rbo", Float, nullable=True),
    Column("top1_delta", Float, nullable=True),
    Column("served_top1", Float, nullable=True),
    Column("shadow_top1", Float, nullable=True),
    Column("results", JSON, nullable=False),  # the shadow's ids, best first
    Column("error_code", String(64), nullable=True),
    Column("latency_ms", Float, nullable=False),
    _ts("created_at"),
    ForeignKeyConstraint(["tenant_id", "run_key"], ["model_run.tenant_id", "model_run.run_key"]),
    ForeignKeyConstraint(["tenant_id", "model_id"],
                         ["model_catalog.tenant_id", "model_catalog.id"]),
    ForeignKeyConstraint(["tenant_id", "model_version_id"],
                         ["model_version.tenant_id", "model_version.id"]),
    Index("ix_shadow_run_version_time", "tenant_id", "model_version_id", "created_at"),
    CheckConstraint("overlap_at_10 IS NULL OR overlap_at_10 BETWEEN 0 AND 1",
                    name="overlap_range"),
    CheckConstraint("latency_ms >= 0", name="latency_nonneg"),
)

TENANT_TABLES = [t.name for t in metadata.sorted_tables]
