"""A ReleaseRecord's object name may be used again for a new release.

Release records are append-only history identified by `releaseId`; the object name
is where Kubernetes or Git kept the record. The unique rule on (tenant, name) made a
new release under the name of a removed record fail every reconcile of its tenant.
The name stays indexed (lookups by name), no longer unique. On SQLite the table is
rebuilt (batch mode), which drops its triggers: the immutability triggers of 0004
are created again.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_FROZEN = "release records are immutable"


def _sqlite_triggers(create: bool) -> None:
    for verb in ("UPDATE", "DELETE"):
        name = f"release_record_no_{verb.lower()}"
        op.execute(f"CREATE TRIGGER {name} BEFORE {verb} ON release_record "
                   f"BEGIN SELECT RAISE(ABORT, '{_FROZEN}'); END" if create
                   else f"DROP TRIGGER IF EXISTS {name}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_triggers(create=False)
        with op.batch_alter_table("release_record", recreate="always") as batch:
            batch.drop_constraint("uq_release_record_tenant_id_name", type_="unique")
        _sqlite_triggers(create=True)
    else:
        op.drop_constraint("uq_release_record_tenant_id_name", "release_record",
                           type_="unique")
    op.create_index("ix_release_record_tenant_id_name", "release_record", ["tenant_id", "name"])


def downgrade() -> None:
    op.drop_index("ix_release_record_tenant_id_name", "release_record")
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_triggers(create=False)
        with op.batch_alter_table("release_record", recreate="always") as batch:
            batch.create_unique_constraint("uq_release_record_tenant_id_name",
                                           ["tenant_id", "name"])
        _sqlite_triggers(create=True)
    else:
        op.create_unique_constraint("uq_release_record_tenant_id_name", "release_record",
                                    ["tenant_id", "name"])
