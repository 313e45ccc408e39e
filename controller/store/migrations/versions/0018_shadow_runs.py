"""Shadow comparison: the shadow in force on each snapshot, and one row per mirrored request.

`policy_snapshot.shadow_version` / `shadow_percent`: the RolloutPolicy's `spec.shadow`
as published (NULL: none). `shadow_run`: a request mirrored to the shadow version after
its answer was sent, keyed by the served run it shadows, with overlap@10, rank-biased
overlap and the top-1 score delta (NULL when the shadow search failed: its error code).

Expand only: nullable columns and a new table under row-level security like the others.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ROLE_TENANT = "(SELECT r.tenant_id FROM tenant_role r WHERE r.role_name = current_user)"
_BOUND = f"{_ROLE_TENANT} IS NULL OR tenant_id = {_ROLE_TENANT}"


def upgrade() -> None:
    op.add_column("policy_snapshot", sa.Column("shadow_version", sa.String(length=64),
                                               nullable=True))
    op.add_column("policy_snapshot", sa.Column("shadow_percent", sa.Integer(), nullable=True))
    op.create_table(
        "shadow_run",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("run_key", sa.String(length=64), nullable=False),
        sa.Column("model_id", _ID, nullable=False),
        sa.Column("model_version_id", _ID, nullable=False),
        sa.Column("overlap_at_10", sa.Float(), nullable=True),
        sa.Column("rbo", sa.Float(), nullable=True),
        sa.Column("top1_delta", sa.Float(), nullable=True),
        sa.Column("served_top1", sa.Float(), nullable=True),
        sa.Column("shadow_top1", sa.Float(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("overlap_at_10 IS NULL OR overlap_at_10 BETWEEN 0 AND 1",
                           name=op.f("ck_shadow_run_overlap_range")),
        sa.CheckConstraint("latency_ms >= 0", name=op.f("ck_shadow_run_latency_nonneg")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "run_key"], ["model_run.tenant_id", "model_run.run_key"],
            name=op.f("fk_shadow_run_tenant_id_run_key_model_run")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "model_id"], ["model_catalog.tenant_id", "model_catalog.id"],
            name=op.f("fk_shadow_run_tenant_id_model_id_model_catalog")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "model_version_id"], ["model_version.tenant_id", "model_version.id"],
            name=op.f("fk_shadow_run_tenant_id_model_version_id_model_version")),
        sa.PrimaryKeyConstraint("tenant_id", "run_key", name=op.f("pk_shadow_run")),
    )
    op.create_index("ix_shadow_run_version_time", "shadow_run",
                    ["tenant_id", "model_version_id", "created_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE shadow_run ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE shadow_run FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY tenant_isolation ON shadow_run "
               "USING (tenant_id = current_setting('app.tenant_id', true)) "
               "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
    op.execute("CREATE POLICY tenant_role_binding ON shadow_run AS RESTRICTIVE "
               f"USING ({_BOUND}) WITH CHECK ({_BOUND})")
    role = context.config.attributes.get("app_role", "cadml_app")
    op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
               f"THEN GRANT SELECT, INSERT, UPDATE, DELETE ON shadow_run TO {role}; "
               "END IF; END $$")


def downgrade() -> None:
    op.drop_index("ix_shadow_run_version_time", table_name="shadow_run")
    op.drop_table("shadow_run")
    for column in ("shadow_percent", "shadow_version"):
        with op.batch_alter_table("policy_snapshot") as batch:
            batch.drop_column(column)
