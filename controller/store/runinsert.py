"""The run-record insert, every search request's write path: prepared once per dialect.

SQLAlchemy's statement execution (compiled-cache lookup, parameter processing, result
set-up) cost more than the insert itself: ~0.3 ms a batch on SQLite. Here the SQL text
and each column's bind processor are taken from SQLAlchemy once; a batch is then one
id look-up and one `executemany` on the transaction's own DBAPI cursor, so it commits
with the transaction (and its tenant scope) like any other write. DBAPI errors come out
as SQLAlchemy's, which the store translates as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from controller.errors import ConflictError
from controller.records import RunRecord
from controller.store import tables as t

# The columns a run writes, in the order of each row tuple below.
COLUMNS = ("tenant_id", "run_key", "model_id", "model_version_id", "job_key",
           "policy_version", "route_source", "thresholds", "decision", "ai_suggestion",
           "review_status", "latency_ms", "success", "met_threshold", "error_code",
           "parse_ms", "search_ms", "binding_state", "created_at")

_EMPTY = object()  # stands for any empty dict in `RunInsert.rows`' memo of bound values

_IDS = select(t.model_version.c.version, t.model_catalog.c.id, t.model_version.c.id).join(
    t.model_version, and_(t.model_version.c.tenant_id == t.model_catalog.c.tenant_id,
                          t.model_version.c.model_id == t.model_catalog.c.id)).where(
    t.model_catalog.c.tenant_id == bindparam("tenant"),
    t.model_catalog.c.name == bindparam("model"))


@dataclass(frozen=True)
class _Statement:
    sql: str
    keys: tuple[str, ...] | None  # positional paramstyle: parameter order; None: named

    def params(self, values: dict[str, Any]) -> Any:
        return values if self.keys is None else tuple(values[k] for k in self.keys)


def _statement(stmt: Any, dialect: Dialect, column_keys: Sequence[str] | None = None
               ) -> _Statement:
    compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
    keys = tuple(compiled.positiontup) if compiled.positional else None
    return _Statement(str(compiled), keys)


@dataclass(frozen=True)
class RunInsert:
    """The run insert and id look-up compiled for one dialect, with the bind processors
    of the columns that need one (JSON, and SQLite's datetimes and booleans)."""

    insert: _Statement
    ids: _Statement
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    dbapi_error: type[Exception]
    order: tuple[int, ...] | None  # positional paramstyle: each parameter's COLUMNS index

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> RunInsert:
        procs = []
        for i, name in enumerate(COLUMNS):
            column_type = t.model_run.c[name].type
            proc = column_type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                procs.append((i, proc))
        statement = _statement(insert(t.model_run), dialect, COLUMNS)
        order = None if statement.keys is None else tuple(COLUMNS.index(k)
                                                          for k in statement.keys)
        return cls(statement, _statement(_IDS, dialect), tuple(procs),
                   dialect.loaded_dbapi.Error, order)

    def rows(self, tenant: str, runs: Sequence[RunRecord],
             ids: dict[tuple[str, str], tuple[int, int]], now: datetime) -> list[Any]:
        """One parameter row per run, in the insert's order; a run whose version is not in
        the store is a ConflictError (nothing of the batch is written)."""
        out = []
        processors, order = self.processors, self.order
        # each column's last value and its bound form: the runs of a batch share their
        # created_at (and often more), converted once (SQLite's datetime text costs ~5 µs;
        # the JSON of a run's thresholds as much when the policy sets none: every {} binds
        # alike)
        last: dict[int, tuple[Any, Any]] = {}
        for r in runs:
            found = ids.get((r.model_name, r.version))
            if found is None:
                raise ConflictError(f"run {r.run_key}: version {r.model_name} {r.version} is "
                                    "not in the store")
            row = [tenant, r.run_key, found[0], found[1], r.job_key, r.policy_version,
                   r.route_source, r.thresholds, "PENDING_REVIEW", r.ai_suggestion,
                   "PENDING_REVIEW", r.latency_ms, r.success, r.met_threshold, r.error_code,
                   r.parse_ms, r.search_ms, r.binding_state, r.created_at or now]
            for i, proc in processors:
                value, seen = row[i], last.get(i)
                key = _EMPTY if type(value) is dict and not value else value
                if seen is not None and seen[0] is key:
                    row[i] = seen[1]
                else:
                    row[i] = bound = proc(value)
                    last[i] = (key, bound)
            out.append(dict(zip(COLUMNS, row, strict=True)) if order is None
                       else tuple([row[i] for i in order]))
        return out

    def execute(self, conn: Connection, tenant: str, runs: Sequence[RunRecord],
                now: datetime) -> None:
        """Insert `runs` inside `conn`'s open transaction."""
        cursor = conn.connection.cursor()
        sql: str | None = None
        params: Any = None
        try:
            ids: dict[tuple[str, str], tuple[int, int]] = {}
            for model in sorted({r.model_name for r in runs}):
                sql, params = self.ids.sql, self.ids.params({"tenant": tenant, "model": model})
                cursor.execute(sql, params)
                ids.update({(model, v): (mid, vid) for v, mid, vid in cursor.fetchall()})
            sql, params = self.insert.sql, self.rows(tenant, runs, ids, now)
            cursor.executemany(sql, params)
        except self.dbapi_error as exc:
            raise DBAPIError.instance(sql, params, exc, self.dbapi_error,
                                      dialect=conn.dialect) from exc
        finally:
            cursor.close()


_PREPARED: dict[str, RunInsert] = {}


def run_insert(dialect: Dialect) -> RunInsert:
    """The prepared insert for `dialect` (built on first use)."""
    key = f"{dialect.name}+{dialect.driver}"
    found = _PREPARED.get(key)
    if found is None:
        found = _PREPARED[key] = RunInsert.for_dialect(dialect)
    return found
