"""Canary steps: where each model's canary plan stands (`rollout_step`).

One row per model: the plan it walks (`plan_key`: the policy's weights, steps and
analysis), the step, its phase and start, the verdicts so far, the current analysis
step's measurements and the last user command applied. Keyed by the model, as
`analysis_state` is, so a policy rename keeps the progress.

Expand only: a new table; nothing reads it unless a policy has `spec.strategy.steps`.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_step",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("plan_key", sa.String(length=64), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("command", sa.String(length=128), server_default=sa.text("''"),
                  nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("step_index >= 0", name=op.f("ck_rollout_step_step_index_nonneg")),
        sa.CheckConstraint("phase IN ('Progressing', 'Paused', 'Aborted', 'ReadyToPromote')",
                           name=op.f("ck_rollout_step_phase")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "model_id"], ["model_catalog.tenant_id", "model_catalog.id"],
            name=op.f("fk_rollout_step_tenant_id_model_id_model_catalog")),
        sa.PrimaryKeyConstraint("tenant_id", "model_id", name=op.f("pk_rollout_step")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE rollout_step ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE rollout_step FORCE ROW LEVEL SECURITY")
        op.execute("CREATE POLICY tenant_isolation ON rollout_step "
                   "USING (tenant_id = current_setting('app.tenant_id', true)) "
                   "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
        role = context.config.attributes.get("app_role", "cadml_app")
        op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                   f"THEN GRANT SELECT, INSERT, UPDATE, DELETE ON rollout_step TO {role}; "
                   "END IF; END $$")


def downgrade() -> None:
    op.drop_table("rollout_step")
