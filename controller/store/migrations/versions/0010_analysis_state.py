"""Canary analysis as measurements, keyed by (model, version, policy spec hash).

`canary_analysis` kept one verdict per (policy name, version): renaming the policy lost
an abort. `analysis_state` keys the analysis by the model instead (the policy's spec
hash does not change with its name) and keeps the last measurements.

Expand + backfill + contract: the table is created, every `canary_analysis` row is
copied with its model taken from the policy row of that name (its verdict becomes the
one measurement, carrying its failure count), and `canary_analysis` is dropped. A row
whose policy name no longer exists in the store (a policy renamed since) was already
invisible to the planner and is not copied. The owner lifts FORCE on the two tables it
reads for the copy inside this transaction, as 0008 does.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OLD = sa.table("canary_analysis", sa.column("tenant_id"), sa.column("policy_name"),
                sa.column("version"), sa.column("spec_hash"), sa.column("failures"),
                sa.column("aborted"), sa.column("verdicts", sa.JSON()),
                sa.column("updated_at"))
_NEW = sa.table("analysis_state", sa.column("tenant_id"), sa.column("model_id"),
                sa.column("version"), sa.column("spec_hash"), sa.column("failures"),
                sa.column("aborted"), sa.column("measurements", sa.JSON()),
                sa.column("updated_at"))
_POLICY = sa.table("model_rollout_policy", sa.column("tenant_id"), sa.column("id"),
                   sa.column("name"), sa.column("model_id"), sa.column("deleted"))
_READ = ("canary_analysis", "model_rollout_policy")


def _rls(table: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON {table} "
               "USING (tenant_id = current_setting('app.tenant_id', true)) "
               "WITH CHECK (tenant_id = current_setting('app.tenant_id', true))")
    role = context.config.attributes.get("app_role", "cadml_app")
    op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
               f"THEN GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}; "
               "END IF; END $$")


def _force(tables: tuple[str, ...], on: bool) -> None:
    for table in tables:
        op.execute(f"ALTER TABLE {table} {'' if on else 'NO '}FORCE ROW LEVEL SECURITY")


def upgrade() -> None:
    op.create_table(
        "analysis_state",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("aborted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("failures >= 0", name=op.f("ck_analysis_state_failures_nonneg")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "model_id"], ["model_catalog.tenant_id", "model_catalog.id"],
            name=op.f("fk_analysis_state_tenant_id_model_id_model_catalog")),
        sa.PrimaryKeyConstraint("tenant_id", "model_id", "version", "spec_hash",
                                name=op.f("pk_analysis_state")),
    )
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        _force(_READ, on=False)
    rows = bind.execute(
        sa.select(_OLD, _POLICY.c.model_id).join(_POLICY, sa.and_(
            _POLICY.c.tenant_id == _OLD.c.tenant_id, _POLICY.c.name == _OLD.c.policy_name))
        .order_by(_OLD.c.updated_at)).mappings().all()
    copied: dict[tuple[Any, ...], dict[str, Any]] = {}  # the newest row of each new key
    for r in rows:
        verdicts = dict(r["verdicts"] or {})
        measurements = [{**verdicts, "consecutiveFailures": r["failures"]}] if verdicts else []
        copied[(r["tenant_id"], r["model_id"], r["version"], r["spec_hash"])] = dict(
            tenant_id=r["tenant_id"], model_id=r["model_id"], version=r["version"],
            spec_hash=r["spec_hash"], failures=r["failures"], aborted=r["aborted"],
            measurements=measurements, updated_at=r["updated_at"])
    if copied:
        bind.execute(sa.insert(_NEW), list(copied.values()))
    if postgres:
        _force(_READ, on=True)
        _rls("analysis_state")
    op.drop_table("canary_analysis")


def downgrade() -> None:
    op.create_table(
        "canary_analysis",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("policy_name", sa.String(length=253), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("aborted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("failures >= 0", name=op.f("ck_canary_analysis_failures_nonneg")),
        sa.PrimaryKeyConstraint("tenant_id", "policy_name", "version",
                                name=op.f("pk_canary_analysis")),
    )
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        _force(("analysis_state", "model_rollout_policy"), on=False)
    rows = bind.execute(
        sa.select(_NEW, _POLICY.c.name).join(_POLICY, sa.and_(
            _POLICY.c.tenant_id == _NEW.c.tenant_id, _POLICY.c.model_id == _NEW.c.model_id,
            _POLICY.c.deleted.is_(False))).order_by(_NEW.c.updated_at)).mappings().all()
    copied: dict[tuple[Any, ...], dict[str, Any]] = {}  # the newest state per policy+version
    for r in rows:
        measurements = list(r["measurements"] or [])
        copied[(r["tenant_id"], r["name"], r["version"])] = dict(
            tenant_id=r["tenant_id"], policy_name=r["name"], version=r["version"],
            spec_hash=r["spec_hash"], failures=r["failures"], aborted=r["aborted"],
            verdicts=measurements[-1] if measurements else {}, updated_at=r["updated_at"])
    if copied:
        bind.execute(sa.insert(_OLD), list(copied.values()))
    if postgres:
        _force(("analysis_state", "model_rollout_policy"), on=True)
        _rls("canary_analysis")
    op.drop_table("analysis_state")
