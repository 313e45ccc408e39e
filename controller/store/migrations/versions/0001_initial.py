"""Initial schema: every table (model_version without model_key and the one-STABLE index).

The one-STABLE rule arrives in three steps: 0002 expands and backfills model_key,
0003 enforces it.

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('object_kind', sa.String(length=64), nullable=False),
    sa.Column('object_name', sa.String(length=253), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint('seq >= 1', name=op.f('ck_audit_event_seq_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event')),
    sa.UniqueConstraint('tenant_id', 'seq', name=op.f('uq_audit_event_tenant_id_seq'))
    )
    op.create_table('audit_head',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_audit_head'))
    )
    op.create_table('model_catalog',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('model_key', sa.String(length=63), nullable=False),
    sa.Column('provider', sa.String(length=128), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('threshold_defaults', sa.JSON(), nullable=False),
    sa.Column('review_control_allowed', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('review_default_decision', sa.String(length=32), server_default='PENDING_REVIEW', nullable=False),
    sa.Column('worker_replicas', sa.Integer(), server_default='1', nullable=False),
    sa.Column('generation', sa.Integer(), server_default='0', nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('deleted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("review_default_decision = 'PENDING_REVIEW'", name=op.f('ck_model_catalog_review_pending')),
    sa.CheckConstraint('review_control_allowed = false', name=op.f('ck_model_catalog_review_never_controls')),
    sa.CheckConstraint('worker_replicas >= 0', name=op.f('ck_model_catalog_replicas_nonneg')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_catalog')),
    sa.UniqueConstraint('tenant_id', 'id', name=op.f('uq_model_catalog_tenant_id_id')),
    sa.UniqueConstraint('tenant_id', 'model_key', name=op.f('uq_model_catalog_tenant_id_model_key')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_model_catalog_tenant_id_name'))
    )
    op.create_table('release_record',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('release_id', sa.String(length=128), nullable=False),
    sa.Column('git_sha', sa.String(length=40), nullable=False),
    sa.Column('model_version_name', sa.String(length=253), nullable=False),
    sa.Column('risk_level', sa.String(length=8), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("risk_level IN ('low', 'medium', 'high', 'write')", name=op.f('ck_release_record_risk_level')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_release_record')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_release_record_tenant_id_name')),
    sa.UniqueConstraint('tenant_id', 'release_id', name=op.f('uq_release_record_tenant_id_release_id'))
    )
    op.create_table('schedule_tick',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('window_key', sa.String(length=128), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_tick')),
    sa.UniqueConstraint('tenant_id', 'window_key', name=op.f('uq_schedule_tick_tenant_id_window_key'))
    )
    op.create_table('model_rollout_policy',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('policy_version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('refresh_seconds', sa.Integer(), server_default='5', nullable=False),
    sa.Column('generation', sa.Integer(), server_default='0', nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('deleted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('policy_version >= 0', name=op.f('ck_model_rollout_policy_policy_version_nonneg')),
    sa.CheckConstraint('refresh_seconds BETWEEN 1 AND 3600', name=op.f('ck_model_rollout_policy_refresh_range')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_id'], ['model_catalog.tenant_id', 'model_catalog.id'], name=op.f('fk_model_rollout_policy_tenant_id_model_id_model_catalog')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_rollout_policy')),
    sa.UniqueConstraint('tenant_id', 'id', name=op.f('uq_model_rollout_policy_tenant_id_id')),
    sa.UniqueConstraint('tenant_id', 'model_id', name=op.f('uq_model_rollout_policy_tenant_id_model_id')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_model_rollout_policy_tenant_id_name'))
    )
    op.create_table('model_version',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('artifact_uri', sa.String(length=2048), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=True),
    sa.Column('artifact_format', sa.String(length=16), nullable=False),
    sa.Column('feature_version', sa.String(length=4), nullable=False),
    sa.Column('threshold_defaults', sa.JSON(), nullable=False),
    sa.Column('generation', sa.Integer(), server_default='0', nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('deleted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("artifact_format IN ('faiss-index', 'npz', 'pickle')", name=op.f('ck_model_version_format')),
    sa.CheckConstraint("feature_version IN ('v1', 'v2', 'v3', 'v4')", name=op.f('ck_model_version_feature_version')),
    sa.CheckConstraint("stage IN ('DRAFT', 'CANARY', 'STABLE', 'DEPRECATED')", name=op.f('ck_model_version_stage')),
    sa.CheckConstraint("stage NOT IN ('CANARY', 'STABLE') OR artifact_sha256 IS NOT NULL", name=op.f('ck_model_version_sha256_when_routable')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_id'], ['model_catalog.tenant_id', 'model_catalog.id'], name=op.f('fk_model_version_tenant_id_model_id_model_catalog')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('tenant_id', 'id', name=op.f('uq_model_version_tenant_id_id')),
    sa.UniqueConstraint('tenant_id', 'model_id', 'version', name=op.f('uq_model_version_tenant_id_model_id_version')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_model_version_tenant_id_name'))
    )
    op.create_table('worker_state',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('worker_id', sa.String(length=253), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('applied_policy_version', sa.Integer(), nullable=False),
    sa.Column('degraded', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'model_id'], ['model_catalog.tenant_id', 'model_catalog.id'], name=op.f('fk_worker_state_tenant_id_model_id_model_catalog')),
    sa.PrimaryKeyConstraint('tenant_id', 'worker_id', name=op.f('pk_worker_state'))
    )
    op.create_table('ai_analysis_jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('job_key', sa.String(length=256), nullable=False),
    sa.Column('model_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('runtime_snapshot', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'model_version_id'], ['model_version.tenant_id', 'model_version.id'], name=op.f('fk_ai_analysis_jobs_tenant_id_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_analysis_jobs')),
    sa.UniqueConstraint('tenant_id', 'id', name=op.f('uq_ai_analysis_jobs_tenant_id_id')),
    sa.UniqueConstraint('tenant_id', 'job_key', name=op.f('uq_ai_analysis_jobs_tenant_id_job_key'))
    )
    op.create_table('evaluation',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('model_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_key', sa.String(length=256), server_default='', nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('success_rate', sa.Float(), nullable=True),
    sa.Column('review_override_rate', sa.Float(), nullable=True),
    sa.Column('p95_latency_ms', sa.Float(), nullable=True),
    sa.Column('sample_size', sa.Integer(), nullable=False),
    sa.Column('reviewed_sample_size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('review_override_rate IS NULL OR review_override_rate BETWEEN 0 AND 1', name=op.f('ck_evaluation_override_rate')),
    sa.CheckConstraint('sample_size >= 0 AND reviewed_sample_size BETWEEN 0 AND sample_size', name=op.f('ck_evaluation_samples')),
    sa.CheckConstraint('success_rate IS NULL OR success_rate BETWEEN 0 AND 1', name=op.f('ck_evaluation_success_rate')),
    sa.CheckConstraint('window_start < window_end', name=op.f('ck_evaluation_window')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_version_id'], ['model_version.tenant_id', 'model_version.id'], name=op.f('fk_evaluation_tenant_id_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation')),
    sa.UniqueConstraint('tenant_id', 'model_version_id', 'job_key', 'window_start', 'window_end', name=op.f('uq_evaluation_tenant_id_model_version_id_job_key_window_start_window_end'))
    )
    op.create_table('model_run',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('run_key', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_key', sa.String(length=256), nullable=True),
    sa.Column('policy_version', sa.Integer(), nullable=False),
    sa.Column('route_source', sa.String(length=16), nullable=False),
    sa.Column('thresholds', sa.JSON(), nullable=False),
    sa.Column('decision', sa.String(length=32), nullable=False),
    sa.Column('ai_suggestion', sa.String(length=32), nullable=True),
    sa.Column('review_status', sa.String(length=16), server_default='PENDING_REVIEW', nullable=False),
    sa.Column('human_decision', sa.String(length=32), nullable=True),
    sa.Column('reviewer', sa.String(length=256), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('success', sa.Boolean(), nullable=False),
    sa.Column('met_threshold', sa.Boolean(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("(review_status = 'PENDING_REVIEW') = (reviewer IS NULL)", name=op.f('ck_model_run_reviewed_has_reviewer')),
    sa.CheckConstraint("decision = 'PENDING_REVIEW'", name=op.f('ck_model_run_ai_never_decides')),
    sa.CheckConstraint("review_status IN ('PENDING_REVIEW', 'APPROVED', 'REJECTED')", name=op.f('ck_model_run_review_status')),
    sa.CheckConstraint("route_source IN ('override', 'binding', 'policy', 'default')", name=op.f('ck_model_run_route_source')),
    sa.CheckConstraint('latency_ms >= 0', name=op.f('ck_model_run_latency_nonneg')),
    sa.CheckConstraint('policy_version >= 0', name=op.f('ck_model_run_policy_version_nonneg')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_id'], ['model_catalog.tenant_id', 'model_catalog.id'], name=op.f('fk_model_run_tenant_id_model_id_model_catalog')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_version_id'], ['model_version.tenant_id', 'model_version.id'], name=op.f('fk_model_run_tenant_id_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_run')),
    sa.UniqueConstraint('tenant_id', 'run_key', name=op.f('uq_model_run_tenant_id_run_key'))
    )
    with op.batch_alter_table('model_run', schema=None) as batch_op:
        batch_op.create_index('ix_model_run_version_time', ['tenant_id', 'model_version_id', 'created_at'], unique=False)

    op.create_table('policy_snapshot',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('policy_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('policy_version', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('thresholds', sa.JSON(), nullable=False),
    sa.Column('refresh_seconds', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('policy', 'override', 'rollback', 'analysis-abort', 'expired')", name=op.f('ck_policy_snapshot_source')),
    sa.CheckConstraint('policy_version >= 1', name=op.f('ck_policy_snapshot_policy_version_positive')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_id'], ['model_catalog.tenant_id', 'model_catalog.id'], name=op.f('fk_policy_snapshot_tenant_id_model_id_model_catalog')),
    sa.ForeignKeyConstraint(['tenant_id', 'policy_id'], ['model_rollout_policy.tenant_id', 'model_rollout_policy.id'], name=op.f('fk_policy_snapshot_tenant_id_policy_id_model_rollout_policy')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_snapshot')),
    sa.UniqueConstraint('tenant_id', 'id', name=op.f('uq_policy_snapshot_tenant_id_id')),
    sa.UniqueConstraint('tenant_id', 'policy_id', 'policy_version', name=op.f('uq_policy_snapshot_tenant_id_policy_id_policy_version'))
    )
    op.create_table('policy_route',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('weight', sa.Integer(), nullable=False),
    sa.Column('is_stable', sa.Boolean(), nullable=False),
    sa.CheckConstraint('is_stable OR weight BETWEEN 1 AND 99', name=op.f('ck_policy_route_canary_weight')),
    sa.CheckConstraint('weight BETWEEN 0 AND 100', name=op.f('ck_policy_route_weight_range')),
    sa.ForeignKeyConstraint(['tenant_id', 'model_version_id'], ['model_version.tenant_id', 'model_version.id'], name=op.f('fk_policy_route_tenant_id_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['tenant_id', 'snapshot_id'], ['policy_snapshot.tenant_id', 'policy_snapshot.id'], name=op.f('fk_policy_route_tenant_id_snapshot_id_policy_snapshot')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_route')),
    sa.UniqueConstraint('tenant_id', 'snapshot_id', 'model_version_id', name=op.f('uq_policy_route_tenant_id_snapshot_id_model_version_id'))
    )


def downgrade() -> None:
    op.drop_table('policy_route')
    op.drop_table('policy_snapshot')
    with op.batch_alter_table('model_run', schema=None) as batch_op:
        batch_op.drop_index('ix_model_run_version_time')

    op.drop_table('model_run')
    op.drop_table('evaluation')
    op.drop_table('ai_analysis_jobs')
    op.drop_table('worker_state')
    op.drop_table('model_version')
    op.drop_table('model_rollout_policy')
    op.drop_table('schedule_tick')
    op.drop_table('release_record')
    op.drop_table('model_catalog')
    op.drop_table('audit_head')
    op.drop_table('audit_event')
