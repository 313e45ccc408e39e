"""The repository: plain data in and out of the store, one transaction per step.

`Store.transaction(tenant, actor)` opens one transaction scoped to one tenant
(row-level security on PostgreSQL); every row written in it and its audit events
commit together or not at all. Database refusals become `ConflictError` (a rule
lost, e.g. a second STABLE) or `StoreUnavailable` (retry can help). Callers never
see ORM rows or SQLAlchemy exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from controller.errors import ConflictError, NotFound, StaleWrite, StoreError, StoreUnavailable
from controller.evaluation import Metrics, RunFact
from controller.records import (
    AnalysisState,
    ModelRow,
    ObservedTenant,
    PolicyRow,
    PolicySnapshot,
    ReleaseRow,
    RollbackFacts,
    RouteRow,
    RunRecord,
    ShadowRoute,
    ShadowRunRecord,
    StepState,
    VersionRow,
    WorkerState,
)
from controller.routing import effective_routing, held_slots, layered_thresholds, place_routes
from controller.store import tables as t
from controller.store.audit import (
    GENESIS,
    AuditAppend,
    AuditEvent,
    ChainProblem,
    chain_hash,
    verify_chain,
)
from controller.store.engine import READ_ONLY, make_engine
from controller.store.notify import PolicyListener, channel
from controller.store.runinsert import run_insert

WORKER_STATE_TTL = timedelta(minutes=10)
"""Worker rows older than this are ignored and deleted: the pod is gone. Longer than the
status module's WORKER_STALE_AFTER (60 s), so `workers_applied` sees every live worker."""


IN_CHUNK = 5000
"""Values per IN list in a batched read: well under SQLite's 32,766 and PostgreSQL's
65,535 bound parameters, even for (policy, version) pairs."""


class NewSnapshot(NamedTuple):
    """A policy snapshot to publish (see `StoreTx.publish_snapshot`)."""
    policy_name: str
    routes: Sequence[RouteRow]
    thresholds: dict[str, Any]
    source: str
    reason: str = ""
    refresh_seconds: int = 5
    generation: int | None = None
    shadow: ShadowRoute | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _version_row(r: Any, model_name: str) -> VersionRow:
    return VersionRow(name=r["name"], model_name=model_name, version=r["version"],
                      stage=r["stage"], artifact_uri=r["artifact_uri"],
                      artifact_format=r["artifact_format"], artifact_sha256=r["artifact_sha256"],
                      feature_version=r["feature_version"],
                      threshold_defaults=dict(r["threshold_defaults"]),
                      generation=r["generation"], spec_hash=r["spec_hash"],
                      deleted=bool(r["deleted"]), ef_search=r["ef_search"], uid=r["uid"],
                      spec=dict(r["spec"]) if r["spec"] is not None else None)


def _translate(exc: DBAPIError) -> StoreError:
    text_ = str(exc.orig)
    if isinstance(exc, IntegrityError) or "immutable" in text_ or "append-only" in text_:
        if "one_stable" in text_ or "model_version.tenant_id, model_version.model_key" in text_:
            return ConflictError("another version of this model is already STABLE "
                                 "(one STABLE per tenant and model key)")
        return ConflictError(f"the store refused the write: {text_.splitlines()[0]}")
    if "readonly" in text_ or "read-only" in text_:
        return StoreError(f"a read-only transaction tried to write: {text_.splitlines()[0]}")
    if getattr(exc.orig, "sqlstate", None) == "40001":  # REPEATABLE READ lost to a writer
        return StaleWrite("another pass changed the tenant while this one was planned from "
                          f"its snapshot; reconcile again ({text_.splitlines()[0]})")
    if isinstance(exc, OperationalError):  # lost connection, a locked SQLite
        return StoreUnavailable(f"store unavailable: {text_.splitlines()[0]}")
    return StoreError(f"store error: {text_.splitlines()[0]}")


# (model name, semver) → ids of the models' versions: shadow runs resolve theirs with it
_RUN_IDS = select(t.model_catalog.c.name, t.model_version.c.version, t.model_catalog.c.id,
                  t.model_version.c.id).join(t.model_version, and_(
                      t.model_version.c.tenant_id == t.model_catalog.c.tenant_id,
                      t.model_version.c.model_id == t.model_catalog.c.id)).where(
    t.model_catalog.c.tenant_id == bindparam("b_tenant"),
    t.model_catalog.c.name.in_(bindparam("b_models", expanding=True)))


@dataclass(frozen=True)
class RunFilter:
    """What `runs()` selects; None: any."""

    run_key: str | None = None
    model: str | None = None
    version: str | None = None
    job: str | None = None
    outcome: str | None = None  # one of RUN_OUTCOMES
    since: datetime | None = None
    until: datetime | None = None


_OUTCOMES: dict[str, Callable[[Any], Any]] = {
    "met": lambda c: and_(c.success.is_(True), c.met_threshold.is_(True)),
    "below-threshold": lambda c: and_(c.success.is_(True), c.met_threshold.is_(False)),
    "failed": lambda c: c.success.is_(False),
}
RUN_OUTCOMES = tuple(_OUTCOMES)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _aware(value).isoformat()


def _run_json(r: Any) -> dict[str, Any]:
    outcome = "failed" if not r["success"] else \
        "met" if r["met_threshold"] else "below-threshold"
    return {"runKey": r["run_key"], "model": r["model_name"], "version": r["version"],
            "jobId": r["job_key"], "policyVersion": r["policy_version"],
            "routeSource": r["route_source"], "binding": r["binding_state"],
            "thresholds": dict(r["thresholds"]), "decision": r["decision"],
            "aiSuggestion": r["ai_suggestion"], "reviewStatus": r["review_status"],
            "humanDecision": r["human_decision"], "reviewer": r["reviewer"],
            "agree": r["human_agrees"], "latencyMs": r["latency_ms"],
            "parseMs": r["parse_ms"], "searchMs": r["search_ms"], "success": bool(r["success"]),
            "metThreshold": bool(r["met_threshold"]), "outcome": outcome,
            "errorCode": r["error_code"], "createdAt": _iso(r["created_at"]),
            "reviewedAt": _iso(r["reviewed_at"])}


@dataclass(frozen=True)
class AuditFilter:
    """What `audit_events()` selects; None: any. `object_kind` and `object_name` match
    exactly; times compare with the events' UTC timestamps."""

    object_kind: str | None = None
    object_name: str | None = None
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _stamp(at: datetime) -> str:
    """A time as the audit trail writes it (UTC, microseconds): comparable as text."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _audit_where(c: Any, f: AuditFilter) -> list[Any]:
    out = [column == value for column, value in (
        (c.object_kind, f.object_kind), (c.object_name, f.object_name),
        (c.action, f.action), (c.actor, f.actor)) if value is not None]
    if f.since is not None:
        out.append(c.at >= _stamp(f.since))
    if f.until is not None:
        out.append(c.at < _stamp(f.until))
    return out


class Store:
    """The runtime store behind one engine (SQLite file or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(make_engine(url))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, tenant: str, actor: str, *,
                    snapshot: bool = False) -> Iterator[StoreTx]:
        """A read-write transaction for one tenant. SQLite: it holds the write lock from its
        first statement (BEGIN IMMEDIATE), so it is serializable. PostgreSQL: READ COMMITTED,
        or with `snapshot` REPEATABLE READ, which the reconcile step uses: everything it
        observes comes from one snapshot, and a row another transaction changed after that
        snapshot cannot be overwritten (PostgreSQL refuses with a serialization failure,
        raised as StoreUnavailable, and the pass is retried on a fresh view)."""
        options = {"isolation_level": "REPEATABLE READ"} \
            if snapshot and self.dialect == "postgresql" else {}
        with self._begin(tenant, actor, options) as tx:
            yield tx

    @contextmanager
    def read(self, tenant: str, actor: str = "reader") -> Iterator[StoreTx]:
        """A read-only transaction for one tenant that sees one consistent snapshot: SQLite
        reads without the write lock (neither waiting for a writer nor blocking one);
        PostgreSQL runs it READ ONLY at REPEATABLE READ. Writing in it is a StoreError."""
        options: dict[str, Any] = {READ_ONLY: True}
        if self.dialect == "postgresql":
            options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with self._begin(tenant, actor, options) as tx:
            yield tx

    @contextmanager
    def _begin(self, tenant: str, actor: str, options: dict[str, Any]) -> Iterator[StoreTx]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**options)
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"),
                                     {"t": tenant})
                    yield StoreTx(conn, tenant, actor)
        except DBAPIError as exc:
            raise _translate(exc) from exc

    def listen(self, tenant: str, model: str,
               on_notify: Callable[[str], None]) -> PolicyListener | None:
        """Call `on_notify` (from a thread) whenever the model's published policy or job
        bindings change; None where the store cannot notify (SQLite): poll instead."""
        if self.dialect != "postgresql":
            return None
        return PolicyListener(self.engine, channel(tenant, model), on_notify).start()

    def tenants(self) -> list[str]:
        """Every tenant with audit history, by name (the registry every role may list; each
        tenant's rows are still read in a transaction scoped to it)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            return list(conn.execute(select(t.tenant.c.tenant_id).order_by(
                t.tenant.c.tenant_id)).scalars())

    def verify_audit(self, tenant: str) -> ChainProblem | None:
        with self.read(tenant, "audit-verify") as tx:
            return tx.verify_audit()


class StoreTx:
    """One open transaction for one tenant. Methods take and return plain data."""

    def __init__(self, conn: Connection, tenant: str, actor: str) -> None:
        self.conn = conn
        self.tenant = tenant
        self.actor = actor
        self.now = utcnow()

    # ------------------------------------------------------------------ helpers

    def _one(self, stmt: Any) -> Row[Any] | None:
        return self.conn.execute(stmt).first()

    def model_id(self, name: str) -> int | None:
        c = t.model_catalog.c
        row = self._one(select(c.id).where(c.tenant_id == self.tenant, c.name == name))
        return None if row is None else int(row[0])

    def _rows_in(self, stmt: Any, column: Any, values: Sequence[Any]) -> list[Any]:
        """The rows of `stmt` whose `column` is one of `values`, read IN_CHUNK values at a
        time (an IN list is one bound parameter per value, and engines cap those)."""
        return [row for i in range(0, len(values), IN_CHUNK)
                for row in self.conn.execute(stmt.where(column.in_(values[i:i + IN_CHUNK])))]

    def _notify(self, payloads: Sequence[tuple[int, str]]) -> None:
        """Wake each model's workers (model id, payload) at COMMIT (PostgreSQL; nothing on
        SQLite)."""
        if self.conn.dialect.name != "postgresql" or not payloads:
            return
        mc = t.model_catalog.c
        names = {int(i): str(n) for i, n in self._rows_in(
            select(mc.id, mc.name).where(mc.tenant_id == self.tenant), mc.id,
            sorted({mid for mid, _ in payloads}))}
        self.conn.execute(text("SELECT pg_notify(:c, :p)"), [
            {"c": channel(self.tenant, names[mid]), "p": payload} for mid, payload in payloads])

    def _upsert_named(self, table: Any,
                      rows: Sequence[tuple[str, dict[str, Any], str | None]]) -> list[int]:
        """Insert each (name, values, previous_name) as the tenant's row called name, or
        overwrite that row with values, in this order; their ids.

        With `previous_name` (a rename) the row of that name is renamed first, so the
        object keeps its id and history under the new name. The generation guard: a live
        row is never overwritten from an older `generation` (StaleWrite, nothing written);
        a deleted row takes any generation, and so do a rename and another incarnation
        (another uid) of the object. Runs of rows without a rename are written together:
        one read of the existing rows, one executemany UPDATE, one INSERT of the new
        rows."""
        ids: list[int] = []
        run: list[tuple[str, dict[str, Any], bool]] = []
        names: set[str] = set()
        for name, values, previous_name in rows:
            if previous_name is not None or name in names:
                ids += self._write_named(table, run)
                run, names = [], set()
            if previous_name is not None:
                c = table.c
                self.conn.execute(update(table).where(
                    c.tenant_id == self.tenant, c.name == previous_name).values(name=name))
            run.append((name, values, previous_name is not None))
            names.add(name)
        return ids + self._write_named(table, run)

    def _write_named(self, table: Any,
                     run: Sequence[tuple[str, dict[str, Any], bool]]) -> list[int]:
        """`_upsert_named` for rows of distinct names (renamed: True skips the guard).
        Existing rows are overwritten before new ones are inserted: a row leaving a unique
        slot (a STABLE stage, a semver, a modelKey) always exists already, so it frees the
        slot before a new row can take it; rows overwritten keep their order."""
        if not run:
            return []
        c = table.c
        found = {r.name: r for r in self._rows_in(select(
            c.id, c.name, c.generation, c.deleted, c.uid).where(c.tenant_id == self.tenant)
            .with_for_update(), c.name, [name for name, _, _ in run])}
        for name, values, renamed in run:
            row = found.get(name)
            # generations are compared within one incarnation (uid) of the object: one
            # created again (a new cluster on this store, Git mode after the operator)
            # starts at 1 and is newer, not older
            if row is not None and not renamed and not row.deleted and \
                    row.uid == values.get("uid") and \
                    int(values["generation"]) < int(row.generation or 0):
                raise StaleWrite(f"{table.name} {self.tenant}/{name}: the store holds "
                                 f"generation {row.generation}, this pass was built from "
                                 f"generation {values['generation']}; a newer pass has been "
                                 "applied")
        old = [dict(b_id=found[name].id, updated_at=self.now, **values)
               for name, values, _ in run if name in found]
        if old:
            self.conn.execute(update(table).where(c.id == bindparam("b_id")), old)
        new = [dict(tenant_id=self.tenant, name=name, created_at=self.now,
                    updated_at=self.now, **values)
               for name, values, _ in run if name not in found]
        ids = {name: int(row.id) for name, row in found.items()}
        if new:  # rows come back in any order: matched by name
            ids.update((name, int(i)) for name, i in self.conn.execute(
                insert(table).returning(c.name, c.id), new))
        return [ids[name] for name, _, _ in run]

    def _put(self, table: Any, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Update the tenant's row with this key, or insert it (rows keyed by columns)."""
        c = table.c
        where = and_(c.tenant_id == self.tenant, *(c[k] == v for k, v in key.items()))
        if self.conn.execute(update(table).where(where).values(**values)).rowcount == 0:
            self.conn.execute(insert(table).values(tenant_id=self.tenant, **key, **values))

    def _require_models(self, names: Iterable[str]) -> dict[str, tuple[int, str]]:
        """Model name → (id, modelKey) for these names, in one query; ConflictError names
        the first that is not in the store."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        c = t.model_catalog.c
        found = {name: (int(mid), str(key)) for name, mid, key in self._rows_in(
            select(c.name, c.id, c.model_key).where(c.tenant_id == self.tenant), c.name,
            wanted)}
        for name in wanted:
            if name not in found:
                raise ConflictError(f"model {self.tenant}/{name} is not in the store")
        return found

    def _require_model(self, name: str) -> int:
        return self._require_models([name])[name][0]

    # ------------------------------------------------------------------ catalog

    def upsert_model(self, m: ModelRow) -> int:
        """Insert or overwrite with exactly these values; returns the row id."""
        return self.upsert_models([m])[0]

    def upsert_models(self, models: Sequence[ModelRow]) -> list[int]:
        """`upsert_model` of each, in this order, in a few statements; their ids."""
        return self._upsert_named(t.model_catalog, [(m.name, dict(
            model_key=m.model_key, provider=m.provider, display_name=m.display_name,
            description=m.description, threshold_defaults=m.threshold_defaults,
            worker_replicas=m.worker_replicas, generation=m.generation, spec_hash=m.spec_hash,
            review_control_allowed=m.review_control_allowed,
            review_default_decision=m.review_default_decision, deleted=m.deleted, uid=m.uid),
            m.previous_name) for m in models])

    def upsert_version(self, v: VersionRow) -> int:
        return self.upsert_versions([v])[0]

    def upsert_versions(self, versions: Sequence[VersionRow]) -> list[int]:
        """Insert or overwrite each version, in this order (a version leaving STABLE must
        come before one entering it); their ids. Their models must be in the store."""
        models = self._require_models(v.model_name for v in versions)
        return self._upsert_named(t.model_version, [(v.name, dict(
            model_id=models[v.model_name][0], model_key=models[v.model_name][1],
            version=v.version, stage=v.stage, artifact_uri=v.artifact_uri,
            artifact_sha256=v.artifact_sha256, artifact_format=v.artifact_format,
            feature_version=v.feature_version, threshold_defaults=v.threshold_defaults,
            generation=v.generation, spec_hash=v.spec_hash, deleted=v.deleted,
            ef_search=v.ef_search, uid=v.uid, spec=v.spec), v.previous_name)
            for v in versions])

    def set_stage(self, version_name: str, stage: str) -> None:
        c = t.model_version.c
        done = self.conn.execute(update(t.model_version).where(
            c.tenant_id == self.tenant, c.name == version_name).values(
            stage=stage, updated_at=self.now))
        if done.rowcount != 1:
            raise ConflictError(f"version {self.tenant}/{version_name} is not in the store")

    def versions(self, model_name: str) -> list[VersionRow]:
        mv, mc = t.model_version.c, t.model_catalog.c
        rows = self.conn.execute(
            select(t.model_version).join(t.model_catalog, and_(
                mc.tenant_id == mv.tenant_id, mc.id == mv.model_id)).where(
                mv.tenant_id == self.tenant, mc.name == model_name).order_by(mv.id)).mappings()
        return [_version_row(r, model_name) for r in rows]

    # ------------------------------------------------------------------ policies

    def upsert_policy(self, p: PolicyRow) -> int:
        """Insert or overwrite a policy row (its policy_version is left alone). With
        `previous_name`, the row of that name is renamed first, so the policy keeps its
        id, snapshots and policy_version under the new name."""
        return self.upsert_policies([p])[0]

    def upsert_policies(self, policies: Sequence[PolicyRow]) -> list[int]:
        """`upsert_policy` of each, in this order; their ids."""
        models = self._require_models(p.model_name for p in policies)
        return self._upsert_named(t.model_rollout_policy, [(p.name, dict(
            model_id=models[p.model_name][0], spec=p.spec, refresh_seconds=p.refresh_seconds,
            generation=p.generation, spec_hash=p.spec_hash, deleted=p.deleted, uid=p.uid),
            p.previous_name) for p in policies])

    def publish_snapshot(self, policy_name: str, routes: Sequence[RouteRow],
                         thresholds: dict[str, Any], source: str, reason: str = "",
                         refresh_seconds: int = 5, generation: int | None = None,
                         shadow: ShadowRoute | None = None) -> int:
        """Append a snapshot with policy_version + 1; returns the new policy_version.
        Old snapshots are never changed: history only grows. With `generation` (the policy
        generation the plan was built from), a plan older than the policy row is refused."""
        return self.publish_snapshots([NewSnapshot(policy_name, routes, thresholds, source,
                                                   reason, refresh_seconds, generation,
                                                   shadow)])[0]

    def publish_snapshots(self, snapshots: Sequence[NewSnapshot]) -> list[int]:
        """`publish_snapshot` of each, in a few statements whatever their number (the
        policies locked and the versions read once, one executemany per table); the new
        policy_versions in this order."""
        names = [s.policy_name for s in snapshots]
        if len(set(names)) < len(names):  # one policy twice: each builds on the one before
            return [v for s in snapshots for v in self.publish_snapshots([s])]
        if not snapshots:
            return []
        pc, vc, sc = t.model_rollout_policy.c, t.model_version.c, t.policy_snapshot.c
        policies = {r.name: r for r in self._rows_in(select(
            pc.id, pc.name, pc.model_id, pc.policy_version, pc.generation).where(
            pc.tenant_id == self.tenant).with_for_update(), pc.name, names)}
        for s in snapshots:
            policy = policies.get(s.policy_name)
            if policy is None:
                raise ConflictError(f"policy {self.tenant}/{s.policy_name} is not in the store")
            if s.generation is not None and s.generation < int(policy.generation or 0):
                raise StaleWrite(f"policy {self.tenant}/{s.policy_name}: a snapshot planned "
                                 f"from generation {s.generation} is older than the stored "
                                 f"generation {policy.generation}; not published")
        ids = {(int(m), str(v)): int(i) for m, v, i in self._rows_in(
            select(vc.model_id, vc.version, vc.id).where(vc.tenant_id == self.tenant),
            vc.model_id, sorted({p.model_id for p in policies.values()}))}
        for s in snapshots:
            model_id = int(policies[s.policy_name].model_id)
            named = [r.version for r in s.routes] + ([s.shadow.version] if s.shadow else [])
            missing = [v for v in named if (model_id, v) not in ids]
            if missing:
                raise ConflictError(f"policy {s.policy_name} routes to versions not in the "
                                    f"store: {', '.join(missing)}")
        published = [(policies[s.policy_name], int(policies[s.policy_name].policy_version) + 1)
                     for s in snapshots]
        previous = self._routes_of([(int(p.id), int(p.policy_version)) for p, _ in published])
        placed = [place_routes(previous.get(int(policy.id), {}), s.routes)
                  for s, (policy, _) in zip(snapshots, published, strict=True)]
        snap_ids = {(int(p), int(v)): int(i) for p, v, i in self.conn.execute(
            insert(t.policy_snapshot).returning(sc.policy_id, sc.policy_version, sc.id), [dict(
                tenant_id=self.tenant, policy_id=policy.id, model_id=policy.model_id,
                policy_version=version, source=s.source, reason=s.reason,
                thresholds=s.thresholds, refresh_seconds=s.refresh_seconds, created_at=self.now,
                shadow_version=s.shadow.version if s.shadow else None,
                shadow_percent=s.shadow.percent if s.shadow else None)
                for s, (policy, version) in zip(snapshots, published, strict=True)])}
        routes = [dict(tenant_id=self.tenant, snapshot_id=snap_ids[int(policy.id), version],
                       model_version_id=ids[int(policy.model_id), r.version], version=r.version,
                       weight=r.weight, is_stable=r.is_stable, forced=r.forced,
                       slots=list(r.slots or ()))
                  for rs, (policy, version) in zip(placed, published, strict=True)
                  for r in rs]
        if routes:
            self.conn.execute(insert(t.policy_route), routes)
        self.conn.execute(update(t.model_rollout_policy).where(pc.id == bindparam("b_id")), [
            dict(b_id=policy.id, policy_version=version, updated_at=self.now)
            for policy, version in published])
        self._notify([(int(policy.model_id), str(version)) for policy, version in published])
        return [version for _, version in published]

    def _routes_of(self, keys: Sequence[tuple[int, int]]
                   ) -> dict[int, dict[str, tuple[int, ...]]]:
        """policy id → version → slots held in the given (policy id, policy_version)
        snapshots (a route without stored slots: its place by position)."""
        sc, rc = t.policy_snapshot.c, t.policy_route.c
        wanted = [k for k in keys if k[1] > 0]
        if not wanted:
            return {}
        rows = self.conn.execute(
            select(sc.policy_id, rc.version, rc.weight, rc.is_stable, rc.slots)
            .join(t.policy_route, and_(rc.tenant_id == sc.tenant_id, rc.snapshot_id == sc.id))
            .where(sc.tenant_id == self.tenant,
                   tuple_(sc.policy_id, sc.policy_version).in_(wanted)).order_by(rc.id)).all()
        by_policy: dict[int, list[RouteRow]] = {}
        for r in rows:
            by_policy.setdefault(int(r.policy_id), []).append(RouteRow(
                r.version, r.weight, bool(r.is_stable),
                slots=None if r.slots is None else tuple(r.slots)))
        return {pid: held_slots(rs) for pid, rs in by_policy.items()}

    def _snapshot_select(self) -> Any:
        sc, mc, pc = t.policy_snapshot.c, t.model_catalog.c, t.model_rollout_policy.c
        return (select(t.policy_snapshot, pc.name.label("policy_name"),
                       mc.name.label("model_name"))
                .join(t.model_catalog, and_(mc.tenant_id == sc.tenant_id, mc.id == sc.model_id))
                .join(t.model_rollout_policy, and_(pc.tenant_id == sc.tenant_id,
                                                   pc.id == sc.policy_id))
                .where(sc.tenant_id == self.tenant))

    def _build_snapshots(self, rows: Sequence[Any]) -> list[PolicySnapshot]:
        """PolicySnapshots for snapshot rows, their routes read in one query."""
        rc = t.policy_route.c
        routes: dict[int, list[RouteRow]] = {}
        if rows:
            for r in self.conn.execute(
                    select(rc.snapshot_id, rc.version, rc.weight, rc.is_stable, rc.forced,
                           rc.slots)
                    .where(rc.tenant_id == self.tenant,
                           rc.snapshot_id.in_([row["id"] for row in rows])).order_by(rc.id)):
                routes.setdefault(r.snapshot_id, []).append(
                    RouteRow(r.version, r.weight, bool(r.is_stable), bool(r.forced),
                             None if r.slots is None else tuple(r.slots)))
        return [PolicySnapshot(
            model_name=row["model_name"], policy_name=row["policy_name"],
            policy_version=row["policy_version"], source=row["source"], reason=row["reason"],
            routes=tuple(routes.get(row["id"], [])), thresholds=dict(row["thresholds"]),
            refresh_seconds=row["refresh_seconds"], created_at=_aware(row["created_at"]),
            shadow=None if row["shadow_version"] is None else ShadowRoute(
                row["shadow_version"], int(row["shadow_percent"])))
            for row in rows]

    def snapshot(self, model_name: str, at: datetime | None = None,
                 live: bool = False) -> PolicySnapshot | None:
        """The current snapshot of a model's policy, or the one in force at `at`. With
        `live`, only while the policy exists: what workers serve and traffic checks use."""
        sc, mc, pc = t.policy_snapshot.c, t.model_catalog.c, t.model_rollout_policy.c
        stmt = self._snapshot_select().where(mc.name == model_name)
        if at is not None:
            stmt = stmt.where(sc.created_at <= at)
        if live:
            stmt = stmt.where(pc.deleted.is_(False))
        rows = self.conn.execute(stmt.order_by(sc.created_at.desc(), sc.policy_version.desc())
                                 .limit(1)).mappings().all()
        found = self._build_snapshots(rows)
        return found[0] if found else None

    def current_snapshots(self) -> dict[str, PolicySnapshot]:
        """The newest snapshot of every model's policy, in three queries: one index seek per
        policy finds its newest policy_version, then those rows and their routes (older
        snapshots are not read)."""
        sc, pc = t.policy_snapshot.c, t.model_rollout_policy.c
        s = t.policy_snapshot.alias("newer")
        newest = (select(s.c.policy_version).where(s.c.tenant_id == pc.tenant_id,
                                                   s.c.policy_id == pc.id)
                  .order_by(s.c.policy_version.desc()).limit(1).scalar_subquery())
        keys = [(int(i), int(v)) for i, v in self.conn.execute(
            select(pc.id, newest).where(pc.tenant_id == self.tenant)) if v is not None]
        rows = self.conn.execute(self._snapshot_select().where(
            tuple_(sc.policy_id, sc.policy_version).in_(keys))).mappings().all() if keys else []
        out: dict[str, PolicySnapshot] = {}
        for snap in self._build_snapshots(rows):
            previous = out.get(snap.model_name)
            if previous is None or snap.created_at > previous.created_at:
                out[snap.model_name] = snap
        return out

    def serving_snapshot(self, model_name: str) -> PolicySnapshot | None:
        """What the model's workers route by: the live policy's snapshot, or, with no
        RolloutPolicy, the default routing (100 % to the STABLE version, source `default`;
        thresholds: model < version defaults) continuing the model's policyVersion line.
        None when nothing can serve (no model, or no policy and no STABLE version)."""
        snap = self.snapshot(model_name, live=True)
        if snap is not None:
            return snap
        mc = t.model_catalog.c
        model = self._one(select(mc.threshold_defaults).where(
            mc.tenant_id == self.tenant, mc.name == model_name, mc.deleted.is_(False)))
        if model is None:
            return None
        live = {v.version: v for v in self.versions(model_name) if not v.deleted}
        routing = effective_routing(None, {sv: v.stage for sv, v in live.items()}, self.now)
        if not routing.routes:
            return None
        thresholds = {r.version: {k: {"value": th.value, "source": th.source}
                                  for k, th in layered_thresholds(
                                      dict(model.threshold_defaults),
                                      (r.version, live[r.version].threshold_defaults),
                                      {}).items()} for r in routing.routes}
        last = self.snapshot(model_name)
        return PolicySnapshot(model_name=model_name, policy_name="",
                              policy_version=last.policy_version if last else 0,
                              source=routing.source, reason=routing.reason,
                              routes=routing.routes, thresholds=thresholds,
                              refresh_seconds=last.refresh_seconds if last else 5,
                              created_at=self.now)

    def policy_version_of(self, model_name: str) -> int | None:
        pc, mc = t.model_rollout_policy.c, t.model_catalog.c
        return self.conn.execute(
            select(pc.policy_version).join(t.model_catalog, and_(
                mc.tenant_id == pc.tenant_id, mc.id == pc.model_id)).where(
                pc.tenant_id == self.tenant, mc.name == model_name)).scalar()

    def model_names(self) -> list[str]:
        c = t.model_catalog.c
        return list(self.conn.execute(select(c.name).where(c.tenant_id == self.tenant)
                                      .order_by(c.name)).scalars())

    # ------------------------------------------------------------------ observation

    def observe(self) -> ObservedTenant:
        """Everything the planner compares desired state with, for this tenant."""
        mc, mv, pc = t.model_catalog.c, t.model_version.c, t.model_rollout_policy.c
        names = {}
        models = {}
        for r in self.conn.execute(select(t.model_catalog).where(
                mc.tenant_id == self.tenant)).mappings():
            names[r["id"]] = r["name"]
            models[r["name"]] = ModelRow(
                name=r["name"], model_key=r["model_key"], provider=r["provider"],
                display_name=r["display_name"], description=r["description"],
                threshold_defaults=dict(r["threshold_defaults"]),
                worker_replicas=r["worker_replicas"], generation=r["generation"],
                spec_hash=r["spec_hash"], review_control_allowed=bool(r["review_control_allowed"]),
                review_default_decision=r["review_default_decision"], deleted=bool(r["deleted"]),
                uid=r["uid"])
        versions = {
            r["name"]: _version_row(r, names[r["model_id"]])
            for r in self.conn.execute(select(t.model_version).where(
                mv.tenant_id == self.tenant)).mappings()}
        policies = {
            r["name"]: PolicyRow(name=r["name"], model_name=names[r["model_id"]],
                                 spec=dict(r["spec"]), refresh_seconds=r["refresh_seconds"],
                                 generation=r["generation"], spec_hash=r["spec_hash"],
                                 deleted=bool(r["deleted"]), uid=r["uid"])
            for r in self.conn.execute(select(t.model_rollout_policy).where(
                pc.tenant_id == self.tenant)).mappings()}
        snapshots = self.current_snapshots()
        rc = t.release_record.c
        releases = dict(self.conn.execute(select(rc.release_id, rc.spec_hash).where(
            rc.tenant_id == self.tenant)).all())
        return ObservedTenant(models, versions, policies, snapshots, releases,
                              self.statuses(), self.worker_states(), self.latest_evaluations(),
                              self.analysis_states(), self.rollback_facts(),
                              steps=self.step_states(), bindings=self.bound_jobs())

    def statuses(self) -> dict[tuple[str, str], dict[str, Any]]:
        c = t.object_status.c
        return {(r.kind, r.name): dict(r.status) for r in self.conn.execute(
            select(c.kind, c.name, c.status).where(c.tenant_id == self.tenant))}

    def write_status(self, kind: str, name: str, generation: int,
                     status: dict[str, Any]) -> None:
        self.write_statuses({(kind, name): (generation, status)})

    def write_statuses(self, statuses: Mapping[tuple[str, str],
                                               tuple[int, dict[str, Any]]]) -> None:
        """Insert or overwrite the status of each (kind, name) with (generation, status):
        the tenant's status keys are read once, then one executemany inserts the new
        rows and one overwrites the others."""
        if not statuses:
            return
        c = t.object_status.c
        existing = {(k, n) for k, n in self.conn.execute(
            select(c.kind, c.name).where(c.tenant_id == self.tenant))}
        old, new = [], []
        for (kind, name), (generation, status) in statuses.items():
            values = dict(generation=generation, status=status, updated_at=self.now)
            if (kind, name) in existing:
                old.append(dict(b_kind=kind, b_name=name, **values))
            else:
                new.append(dict(tenant_id=self.tenant, kind=kind, name=name, **values))
        if old:
            self.conn.execute(update(t.object_status).where(
                c.tenant_id == self.tenant, c.kind == bindparam("b_kind"),
                c.name == bindparam("b_name")), old)
        if new:
            self.conn.execute(insert(t.object_status), new)

    def delete_statuses(self, keys: Sequence[tuple[str, str]]) -> None:
        """Remove the status of each (kind, name): an object that left under that name."""
        if not keys:
            return
        c = t.object_status.c
        self.conn.execute(delete(t.object_status).where(
            c.tenant_id == self.tenant, c.kind == bindparam("b_kind"),
            c.name == bindparam("b_name")), [dict(b_kind=k, b_name=n) for k, n in keys])

    # ------------------------------------------------------------------ releases

    def record_release(self, r: ReleaseRow) -> bool:
        """Insert a release record once; the same content again is a no-op, other content a
        conflict (records are immutable). Returns True when inserted."""
        c = t.release_record.c
        row = self._one(select(c.spec_hash).where(c.tenant_id == self.tenant,
                                                  c.release_id == r.release_id))
        if row is not None:
            if row.spec_hash != r.spec_hash:
                raise ConflictError(f"release record {r.release_id} exists with other content; "
                                    "release records are immutable")
            return False
        self.conn.execute(insert(t.release_record).values(
            tenant_id=self.tenant, name=r.name, release_id=r.release_id, git_sha=r.git_sha,
            model_version_name=r.model_version_name, risk_level=r.risk_level, spec=r.spec,
            spec_hash=r.spec_hash, created_at=self.now))
        return True

    # ------------------------------------------------------------------ runs

    def _version_ids(self, models: set[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(model name, semver) → (model id, version id) of these models, in one query."""
        pairs = self.conn.execute(_RUN_IDS, {"b_tenant": self.tenant,
                                             "b_models": sorted(models)}).all()
        return {(m, v): (mid, vid) for m, v, mid, vid in pairs}

    def record_runs(self, runs: Sequence[RunRecord]) -> None:
        """Bulk-insert run records (one executemany), ids resolved with one query per model;
        both prepared once (`runinsert`): this is every search request's write path."""
        if runs:
            run_insert(self.conn.dialect).execute(self.conn, self.tenant, runs, self.now)

    def record_shadow_runs(self, runs: Sequence[ShadowRunRecord]) -> None:
        """Bulk-insert shadow comparisons (each beside its committed served run)."""
        if not runs:
            return
        ids = self._version_ids({r.model_name for r in runs})
        rows = []
        for r in runs:
            found = ids.get((r.model_name, r.shadow_version))
            if found is None:
                raise ConflictError(f"shadow of run {r.run_key}: version {r.model_name} "
                                    f"{r.shadow_version} is not in the store")
            rows.append(dict(
                tenant_id=self.tenant, run_key=r.run_key, model_id=found[0],
                model_version_id=found[1], overlap_at_10=r.overlap_at_10, rbo=r.rbo,
                top1_delta=r.top1_delta, served_top1=r.served_top1, shadow_top1=r.shadow_top1,
                results=list(r.results), error_code=r.error_code, latency_ms=r.latency_ms,
                created_at=r.created_at or self.now))
        self.conn.execute(insert(t.shadow_run), rows)

    def shadow_runs(self, model_name: str, since: datetime | None = None,
                    version: str | None = None, limit: int = 100_000) -> list[dict[str, Any]]:
        """A model's shadow comparisons, newest first: each with its served run's job,
        version and the feature version of both versions."""
        s, r, mc = t.shadow_run.c, t.model_run.c, t.model_catalog.c
        shadow_v, served_v = t.model_version.alias("shadow_v"), t.model_version.alias("served_v")
        stmt = (select(s.run_key, s.overlap_at_10, s.rbo, s.top1_delta, s.served_top1,
                       s.shadow_top1, s.error_code, s.latency_ms, s.created_at, r.job_key,
                       shadow_v.c.version.label("shadow_version"),
                       shadow_v.c.feature_version.label("shadow_feature_version"),
                       served_v.c.version.label("served_version"),
                       served_v.c.feature_version.label("served_feature_version"))
                .join(t.model_run, and_(r.tenant_id == s.tenant_id, r.run_key == s.run_key))
                .join(shadow_v, and_(shadow_v.c.tenant_id == s.tenant_id,
                                     shadow_v.c.id == s.model_version_id))
                .join(served_v, and_(served_v.c.tenant_id == r.tenant_id,
                                     served_v.c.id == r.model_version_id))
                .join(t.model_catalog, and_(mc.tenant_id == s.tenant_id, mc.id == s.model_id))
                .where(s.tenant_id == self.tenant, mc.name == model_name))
        if since is not None:
            stmt = stmt.where(s.created_at >= since)
        if version is not None:
            stmt = stmt.where(shadow_v.c.version == version)
        rows = self.conn.execute(stmt.order_by(s.created_at.desc()).limit(limit)).mappings()
        return [{**row, "created_at": _aware(row["created_at"])} for row in rows]

    def review_run(self, run_key: str, status: str, reviewer: str,
                   human_decision: str | None, agree: bool | None = None) -> None:
        """A human reviews an AI run; the AI's own decision stays PENDING_REVIEW. `agree`:
        whether the human agreed with the AI's suggestion, as the reviewer said."""
        c = t.model_run.c
        done = self.conn.execute(update(t.model_run).where(
            c.tenant_id == self.tenant, c.run_key == run_key).values(
            review_status=status, reviewer=reviewer, human_decision=human_decision,
            human_agrees=agree, reviewed_at=self.now))
        if done.rowcount != 1:
            raise NotFound(f"run {run_key} does not exist")

    def run(self, run_key: str) -> dict[str, Any] | None:
        c = t.model_run.c
        row = self.conn.execute(select(t.model_run).where(
            c.tenant_id == self.tenant, c.run_key == run_key)).mappings().first()
        return dict(row) if row else None

    def run_view(self, run_key: str) -> dict[str, Any] | None:
        """One run as the look-ups show it (`GET /v1/runs/{run}`, `cadml runs`)."""
        found = self.runs(RunFilter(run_key=run_key), limit=1)
        return found[0] if found else None

    def runs(self, f: RunFilter, limit: int = 1000) -> list[dict[str, Any]]:
        """The tenant's runs matching `f`, newest first, at most `limit`."""
        c, vc, mc = t.model_run.c, t.model_version.c, t.model_catalog.c
        stmt = (select(t.model_run, vc.version, mc.name.label("model_name"))
                .join(t.model_version, and_(vc.tenant_id == c.tenant_id,
                                            vc.id == c.model_version_id))
                .join(t.model_catalog, and_(mc.tenant_id == c.tenant_id, mc.id == c.model_id))
                .where(c.tenant_id == self.tenant))
        for column, value in ((c.run_key, f.run_key), (mc.name, f.model),
                              (vc.version, f.version), (c.job_key, f.job)):
            if value is not None:
                stmt = stmt.where(column == value)
        if f.outcome is not None:
            stmt = stmt.where(_OUTCOMES[f.outcome](c))
        if f.since is not None:
            stmt = stmt.where(c.created_at >= f.since)
        if f.until is not None:
            stmt = stmt.where(c.created_at < f.until)
        rows = self.conn.execute(stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit))
        return [_run_json(r) for r in rows.mappings()]

    def bind_job(self, job_key: str, version_name: str, snapshot: dict[str, Any]) -> None:
        """Bind a job to a version (insert or move); keeps the runtime snapshot it ran under."""
        c, vc = t.ai_analysis_jobs.c, t.model_version.c
        found = self.conn.execute(select(vc.id, vc.model_id).where(
            vc.tenant_id == self.tenant, vc.name == version_name)).first()
        if found is None:
            raise NotFound(f"version {version_name} does not exist")
        vid, seq = found.id, self._next_binding_seq()  # serialises the tenant's binds
        was = self.conn.execute(select(c.model_version_id).where(
            c.tenant_id == self.tenant, c.job_key == job_key, c.unbound.is_(False))).first()
        if was is None or was.model_version_id != vid:
            self._count_bound(vid, +1)
            if was is not None:
                self._count_bound(was.model_version_id, -1)
        done = self.conn.execute(update(t.ai_analysis_jobs).where(
            c.tenant_id == self.tenant, c.job_key == job_key).values(
            model_version_id=vid, runtime_snapshot=snapshot, updated_seq=seq, unbound=False))
        if done.rowcount == 0:
            self.conn.execute(insert(t.ai_analysis_jobs).values(
                tenant_id=self.tenant, job_key=job_key, model_version_id=vid,
                runtime_snapshot=snapshot, created_at=self.now, updated_seq=seq))
        self._notify([(int(found.model_id), "binding")])

    def _next_binding_seq(self) -> int:
        """The tenant's next binding change marker; binds of a tenant commit in its order
        (SQLite has one writer; PostgreSQL locks the tenant's audit chain head, the lock its
        audit appends take: a row no other tenant's role can see, so none can hold it; an
        advisory lock named after the tenant could be held by any role; it is left only for
        a tenant without audit history, which has no model to bind to)."""
        c, h = t.ai_analysis_jobs.c, t.audit_head.c
        if self.conn.dialect.name == "postgresql" and self._one(
                select(h.seq).where(h.tenant_id == self.tenant).with_for_update()) is None:
            self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                              {"k": f"cadml-bindings/{self.tenant}"})
        return int(self.conn.execute(select(func.coalesce(func.max(c.updated_seq), 0)).where(
            c.tenant_id == self.tenant)).scalar_one()) + 1

    def unbind_job(self, job_key: str) -> dict[str, Any]:
        """Delete a job's binding; the row stays as a tombstone with the next change marker
        so that workers reading only the changes drop it too. NotFound when not bound."""
        found = self.job_binding(job_key)
        if found is None:
            raise NotFound(f"job {job_key} has no binding")
        c, vc = t.ai_analysis_jobs.c, t.model_version.c
        self.conn.execute(update(t.ai_analysis_jobs).where(
            c.tenant_id == self.tenant, c.job_key == job_key).values(
            unbound=True, updated_seq=self._next_binding_seq()))
        model_id, version_id = self.conn.execute(select(vc.model_id, vc.id).where(
            vc.tenant_id == self.tenant, vc.name == found["versionName"])).one()
        self._count_bound(version_id, -1)
        self._notify([(int(model_id), "binding")])
        return found

    def _count_bound(self, version_id: int, change: int) -> None:
        """Keep `model_version.bound_jobs` with the bindings, so a reconcile pass reads the
        counts with the versions instead of counting every job ever bound."""
        vc = t.model_version.c
        self.conn.execute(update(t.model_version).where(
            vc.tenant_id == self.tenant, vc.id == version_id).values(
            bound_jobs=vc.bound_jobs + change))

    def job_binding(self, job_key: str) -> dict[str, Any] | None:
        """A job's binding as stored (model, version, the runtime snapshot it was bound
        under), or None when the job is not bound."""
        c, vc, mc = t.ai_analysis_jobs.c, t.model_version.c, t.model_catalog.c
        row = self._one(
            select(c.job_key, c.runtime_snapshot, c.created_at, vc.version,
                   vc.name.label("version_name"), mc.name.label("model_name"))
            .join(t.model_version, and_(vc.tenant_id == c.tenant_id,
                                        vc.id == c.model_version_id))
            .join(t.model_catalog, and_(mc.tenant_id == vc.tenant_id, mc.id == vc.model_id))
            .where(c.tenant_id == self.tenant, c.job_key == job_key, c.unbound.is_(False)))
        if row is None:
            return None
        return {"jobId": row.job_key, "model": row.model_name, "version": row.version,
                "versionName": row.version_name, "runtimeSnapshot": dict(row.runtime_snapshot),
                "createdAt": _aware(row.created_at).isoformat()}

    def job_bindings(self, model_name: str) -> dict[str, str]:
        """job_key → bound version (semver) for one model."""
        c, vc, mc = t.ai_analysis_jobs.c, t.model_version.c, t.model_catalog.c
        rows = self.conn.execute(
            select(c.job_key, vc.version)
            .join(t.model_version, and_(vc.tenant_id == c.tenant_id,
                                        vc.id == c.model_version_id))
            .join(t.model_catalog, and_(mc.tenant_id == vc.tenant_id, mc.id == vc.model_id))
            .where(c.tenant_id == self.tenant, mc.name == model_name, c.unbound.is_(False)))
        return {r.job_key: r.version for r in rows}

    def bound_jobs(self, model_name: str | None = None) -> dict[str, dict[str, int]]:
        """model → version (semver) → how many jobs are bound to it, from the counts kept
        with each version (every model of the tenant unless `model_name`)."""
        vc, mc = t.model_version.c, t.model_catalog.c
        stmt = (select(mc.name, vc.version, vc.bound_jobs)
                .join(t.model_catalog, and_(mc.tenant_id == vc.tenant_id,
                                            mc.id == vc.model_id))
                .where(vc.tenant_id == self.tenant, vc.bound_jobs > 0))
        if model_name is not None:
            stmt = stmt.where(mc.name == model_name)
        out: dict[str, dict[str, int]] = {}
        for model, version, n in self.conn.execute(stmt):
            out.setdefault(str(model), {})[str(version)] = int(n)
        return out

    def binding_changes(self, model_name: str,
                        since: int = 0) -> tuple[dict[str, str | None], int]:
        """The job bindings of the tenant changed after the marker `since` (0: all of them),
        and the marker to pass next time. Each changed job maps to its bound version (semver)
        when bound to `model_name`, else to None (it moved to another model): a worker that
        keeps its own map applies these changes and reads nothing else. A deleted binding
        maps to None as well.

        Every bind in a tenant takes the next `updated_seq` and binds commit in that order
        (SQLite has one writer; PostgreSQL serialises binds per tenant with an advisory
        lock), so a reader never skips a change that commits after its read."""
        c, vc, mc = t.ai_analysis_jobs.c, t.model_version.c, t.model_catalog.c
        rows = self.conn.execute(
            select(c.job_key, c.updated_seq, c.unbound, vc.version, mc.name)
            .join(t.model_version, and_(vc.tenant_id == c.tenant_id,
                                        vc.id == c.model_version_id))
            .join(t.model_catalog, and_(mc.tenant_id == vc.tenant_id, mc.id == vc.model_id))
            .where(c.tenant_id == self.tenant, c.updated_seq > since)).all()
        changes = {r.job_key: r.version if r.name == model_name and not r.unbound else None
                   for r in rows}
        return changes, max((int(r.updated_seq) for r in rows), default=since)

    def count_runs(self) -> int:
        c = t.model_run.c
        return int(self.conn.execute(select(func.count()).select_from(t.model_run)
                                     .where(c.tenant_id == self.tenant)).scalar_one())

    # ------------------------------------------------------------------ ticks, workers

    def report_worker(self, worker_id: str, model_name: str, applied_policy_version: int,
                      degraded: bool, detail: dict[str, Any] | None = None) -> None:
        """A worker says which policyVersion it serves (and whether it is degraded). Rows of
        the tenant's workers that have not reported for WORKER_STATE_TTL (pods gone) are
        deleted first, so the table holds live incarnations only."""
        c = t.worker_state.c
        self.conn.execute(t.worker_state.delete().where(
            c.tenant_id == self.tenant, c.updated_at < self.now - WORKER_STATE_TTL))
        self._put(t.worker_state, {"worker_id": worker_id}, dict(
            model_id=self._require_model(model_name),
            applied_policy_version=applied_policy_version, degraded=degraded,
            detail=detail or {}, updated_at=self.now))

    def worker_states(self) -> dict[str, list[WorkerState]]:
        """Workers that reported within WORKER_STATE_TTL, by model (older rows are ignored
        until the next report deletes them)."""
        c, mc = t.worker_state.c, t.model_catalog.c
        out: dict[str, list[WorkerState]] = {}
        for r in self.conn.execute(select(t.worker_state, mc.name.label("model_name")).join(
                t.model_catalog, and_(mc.tenant_id == c.tenant_id, mc.id == c.model_id))
                .where(c.tenant_id == self.tenant, c.updated_at >= self.now - WORKER_STATE_TTL)
                .order_by(c.worker_id)).mappings():
            out.setdefault(r["model_name"], []).append(WorkerState(
                r["worker_id"], r["model_name"], r["applied_policy_version"],
                bool(r["degraded"]), _aware(r["updated_at"]), dict(r["detail"])))
        return out

    # ------------------------------------------------------------------ evaluation

    def run_facts(self, model_name: str, since: datetime, until: datetime,
                  version: str | None = None, job_key: str | None = None) -> list[RunFact]:
        rc, vc, mc = t.model_run.c, t.model_version.c, t.model_catalog.c
        stmt = (select(vc.version, rc.success, rc.met_threshold, rc.latency_ms,
                       rc.review_status, rc.ai_suggestion, rc.human_decision, rc.created_at,
                       rc.job_key, rc.human_agrees)
                .join(t.model_version, and_(vc.tenant_id == rc.tenant_id,
                                            vc.id == rc.model_version_id))
                .join(t.model_catalog, and_(mc.tenant_id == rc.tenant_id, mc.id == rc.model_id))
                .where(rc.tenant_id == self.tenant, mc.name == model_name,
                       rc.created_at >= since, rc.created_at < until))
        if version is not None:
            stmt = stmt.where(vc.version == version)
        if job_key is not None:
            stmt = stmt.where(rc.job_key == job_key)
        return [RunFact(r.version, bool(r.success), bool(r.met_threshold), float(r.latency_ms),
                        r.review_status, r.ai_suggestion, r.human_decision,
                        _aware(r.created_at), r.job_key,
                        None if r.human_agrees is None else bool(r.human_agrees))
                for r in self.conn.execute(stmt)]

    def write_evaluation(self, model_name: str, version: str, start: datetime, end: datetime,
                         m: Metrics, job_key: str = "") -> None:
        vc, mc = t.model_version.c, t.model_catalog.c
        vid = self.conn.execute(select(vc.id).join(t.model_catalog, and_(
            mc.tenant_id == vc.tenant_id, mc.id == vc.model_id)).where(
            vc.tenant_id == self.tenant, mc.name == model_name, vc.version == version)
        ).scalar()
        if vid is None:
            raise NotFound(f"version {model_name} {version} is not in the store")
        self._put(t.evaluation, dict(model_version_id=vid, job_key=job_key, window_start=start,
                                     window_end=end), dict(
            success_rate=m.success_rate, review_override_rate=m.review_override_rate,
            p95_latency_ms=m.p95_latency_ms, sample_size=m.sample_size,
            reviewed_sample_size=m.reviewed_sample_size, created_at=self.now))

    def latest_evaluations(self) -> dict[str, dict[str, Any]]:
        """'model/version' → the newest whole-model evaluation of that version: one index
        seek per version (ix_evaluation_latest); older evaluations are not read."""
        c, vc, mc = t.evaluation.c, t.model_version.c, t.model_catalog.c
        e = t.evaluation.alias("newer")
        newest = (select(e.c.id).where(e.c.tenant_id == vc.tenant_id,
                                       e.c.model_version_id == vc.id, e.c.job_key == "")
                  .order_by(e.c.window_end.desc(), e.c.id.desc()).limit(1).scalar_subquery())
        out: dict[str, dict[str, Any]] = {}
        for r in self.conn.execute(
                select(mc.name, vc.version, t.evaluation)
                .select_from(t.model_version)
                .join(t.model_catalog, and_(mc.tenant_id == vc.tenant_id, mc.id == vc.model_id))
                .join(t.evaluation, and_(c.tenant_id == vc.tenant_id, c.id == newest))
                .where(vc.tenant_id == self.tenant)).mappings():
            start, end = _aware(r["window_start"]), _aware(r["window_end"])
            out[f"{r['name']}/{r['version']}"] = {
                "version": r["version"], "window": f"{start.isoformat()}/{end.isoformat()}",
                "successRate": r["success_rate"], "reviewOverrideRate": r["review_override_rate"],
                "p95LatencyMs": r["p95_latency_ms"], "sampleSize": r["sample_size"],
                "reviewedSampleSize": r["reviewed_sample_size"]}
        return out

    def analysis_states(self) -> dict[str, list[AnalysisState]]:
        """Canary analysis state by model name: one per (version, policy spec hash)."""
        c, mc = t.analysis_state.c, t.model_catalog.c
        out: dict[str, list[AnalysisState]] = {}
        for r in self.conn.execute(
                select(t.analysis_state, mc.name.label("model_name"))
                .join(t.model_catalog, and_(mc.tenant_id == c.tenant_id, mc.id == c.model_id))
                .where(c.tenant_id == self.tenant)
                .order_by(mc.name, c.version, c.spec_hash)).mappings():
            out.setdefault(r["model_name"], []).append(AnalysisState(
                r["model_name"], r["version"], r["spec_hash"], r["failures"],
                bool(r["aborted"]), tuple(dict(m) for m in r["measurements"])))
        return out

    def save_analysis(self, s: AnalysisState) -> None:
        """Insert or overwrite the analysis state of (model, version, spec hash)."""
        self._put(t.analysis_state, {"model_id": self._require_model(s.model_name),
                                     "version": s.version, "spec_hash": s.spec_hash},
                  dict(failures=s.failures, aborted=s.aborted,
                       measurements=list(s.measurements), updated_at=self.now))

    def step_states(self) -> dict[str, StepState]:
        """Where each model's canary plan stands, by model name."""
        c, mc = t.rollout_step.c, t.model_catalog.c
        return {r["model_name"]: StepState(
            r["plan_key"], r["step_index"], r["phase"], _aware(r["started_at"]),
            tuple(dict(v) for v in r["verdicts"]), tuple(dict(m) for m in r["measurements"]),
            r["command"], _aware(r["held_since"]) if r["held_since"] is not None else None)
            for r in self.conn.execute(
                select(t.rollout_step, mc.name.label("model_name"))
                .join(t.model_catalog, and_(mc.tenant_id == c.tenant_id, mc.id == c.model_id))
                .where(c.tenant_id == self.tenant)).mappings()}

    def save_step(self, model_name: str, s: StepState, read: StepState | None) -> None:
        """Write where the model's canary plan stands, over the state the writer read
        (`read`; None: there was none). Compare-and-set: when another writer moved the walk
        since (a resume committed while this pass was planned), StaleWrite and nothing
        written, so a stale pass never undoes a user's command; a pass from the latest view
        decides."""
        c = t.rollout_step.c
        model_id = self._require_model(model_name)
        values = dict(plan_key=s.plan_key, step_index=s.index, phase=s.phase,
                      started_at=s.started_at, verdicts=list(s.verdicts),
                      measurements=list(s.measurements), command=s.command,
                      held_since=s.held_since, updated_at=self.now)
        if read is None:
            taken = self.conn.execute(select(c.model_id).where(
                c.tenant_id == self.tenant, c.model_id == model_id)).first()
            if taken is None:
                self.conn.execute(insert(t.rollout_step).values(
                    tenant_id=self.tenant, model_id=model_id, **values))
                return
        elif self.conn.execute(update(t.rollout_step).where(
                c.tenant_id == self.tenant, c.model_id == model_id,
                c.plan_key == read.plan_key, c.step_index == read.index,
                c.phase == read.phase, c.command == read.command).values(**values)
        ).rowcount == 1:
            return
        raise StaleWrite(f"canary steps of {self.tenant}/{model_name}: another writer moved "
                         "them since this pass read them; a pass from the latest view "
                         "decides")

    def rollback_facts(self) -> dict[str, RollbackFacts]:
        """Per model: the newest rollback/abort snapshot and when runs first obeyed it, in
        one statement of two index seeks per model (ix_policy_snapshot_rollbacks, then
        ix_model_run_model_time): older rollbacks and runs are not read. The first run
        that obeyed is searched forward from the snapshot's publication, so the scan
        covers only the runs of the switch-over (a run cannot obey a snapshot before it
        exists; a worker clock behind the store's by d can move the answer by up to d)."""
        sc, mc, rc = t.policy_snapshot.c, t.model_catalog.c, t.model_run.c
        s = t.policy_snapshot.alias("rb")
        newest = (select(s.c.id).where(s.c.tenant_id == mc.tenant_id, s.c.model_id == mc.id,
                                       text(f"rb.{t.ROLLBACK_SQL}"))
                  .order_by(s.c.created_at.desc(), s.c.id.desc()).limit(1).scalar_subquery())
        first = (select(rc.created_at).where(
            rc.tenant_id == sc.tenant_id, rc.model_id == sc.model_id,
            rc.created_at >= sc.created_at, rc.policy_version >= sc.policy_version)
            .order_by(rc.created_at).limit(1).scalar_subquery())
        out: dict[str, RollbackFacts] = {}
        for r in self.conn.execute(
                select(mc.name, sc.policy_version, sc.source, sc.reason, sc.created_at,
                       sc.refresh_seconds, first.label("effective_at"))
                .select_from(t.model_catalog)
                .join(t.policy_snapshot, and_(sc.tenant_id == mc.tenant_id, sc.id == newest))
                .where(mc.tenant_id == self.tenant)).mappings():
            out[r["name"]] = RollbackFacts(
                r["policy_version"], r["source"], r["reason"], _aware(r["created_at"]),
                _aware(r["effective_at"]) if r["effective_at"] is not None else None,
                r["refresh_seconds"])
        return out

    def tick_claimed(self, window_key: str) -> bool:
        c = t.schedule_tick.c
        return self._one(select(c.id).where(c.tenant_id == self.tenant,
                                            c.window_key == window_key)) is not None

    def claim_tick(self, window_key: str, result: dict[str, Any]) -> bool:
        """True the first time a window key is claimed; False (nothing written) after."""
        c = t.schedule_tick.c
        if self._one(select(c.id).where(c.tenant_id == self.tenant,
                                        c.window_key == window_key)) is not None:
            return False
        self.conn.execute(insert(t.schedule_tick).values(
            tenant_id=self.tenant, window_key=window_key, result=result, created_at=self.now))
        return True

    # ------------------------------------------------------------------ audit

    def audit(self, action: str, object_kind: str, object_name: str,
              details: dict[str, Any] | None = None, actor: str | None = None) -> AuditEvent:
        """Append one hash-chained audit event; `actor` overrides the transaction's actor
        for this event."""
        return self.audit_many([AuditAppend(action, object_kind, object_name, details,
                                            actor)])[0]

    def audit_many(self, entries: Sequence[AuditAppend]) -> list[AuditEvent]:
        """Append hash-chained audit events in this order, in three statements whatever
        their number: the chain head is locked once (which serialises appends per tenant),
        the chain is computed here, the rows go in one executemany, the head moves once."""
        if not entries:
            return []
        h = t.audit_head.c
        head = self._one(select(h.seq, h.hash).where(h.tenant_id == self.tenant)
                         .with_for_update())
        if head is None:  # the tenant's first event: register its name and start its chain
            tc = t.tenant.c
            if self._one(select(tc.tenant_id).where(tc.tenant_id == self.tenant)) is None:
                self.conn.execute(insert(t.tenant).values(tenant_id=self.tenant,
                                                          created_at=self.now))
            self.conn.execute(insert(t.audit_head).values(tenant_id=self.tenant, seq=0,
                                                          hash=GENESIS))
            seq, prev = 0, GENESIS
        else:
            seq, prev = int(head.seq), str(head.hash)
        at = _stamp(self.now)
        events = []
        for e in entries:
            seq += 1
            actor, body = e.actor or self.actor, dict(e.details or {})
            digest = chain_hash(prev, self.tenant, seq, at, actor, e.action, e.object_kind,
                                e.object_name, body)
            events.append(AuditEvent(self.tenant, seq, at, actor, e.action, e.object_kind,
                                     e.object_name, body, prev, digest))
            prev = digest
        self.conn.execute(insert(t.audit_event), [dict(
            tenant_id=self.tenant, seq=e.seq, at=e.at, actor=e.actor, action=e.action,
            object_kind=e.object_kind, object_name=e.object_name, details=e.details,
            prev_hash=e.prev_hash, hash=e.hash) for e in events])
        self.conn.execute(update(t.audit_head).where(h.tenant_id == self.tenant)
                          .values(seq=seq, hash=prev))
        return events

    def audit_seq(self) -> int:
        """The sequence number of the tenant's newest audit event (0 before the first): it
        moves with every pass that changed anything."""
        h = t.audit_head.c
        seq = self.conn.execute(select(h.seq).where(h.tenant_id == self.tenant)).scalar()
        return int(seq or 0)

    def last_git_commit(self) -> str | None:
        """The commit (its 12-hex prefix) of the newest change Git mode applied to the
        tenant, from the audit trail's actor `git:<sha12> (<author>)`."""
        c = t.audit_event.c
        actor = self.conn.execute(select(c.actor).where(
            c.tenant_id == self.tenant, c.actor.like("git:%")).order_by(c.seq.desc())
            .limit(1)).scalar()
        return None if actor is None else str(actor)[4:16]

    def last_audit_actor(self, kind: str, name: str, action: str, uid: str) -> str | None:
        """The actor of the newest `action` event on this incarnation (uid) of an object."""
        c = t.audit_event.c
        rows = self.conn.execute(select(c.actor, c.details).where(
            c.tenant_id == self.tenant, c.object_kind == kind, c.object_name == name,
            c.action == action).order_by(c.seq.desc()).limit(20))
        for actor, details in rows:
            if (details or {}).get("uid") == uid:
                return str(actor)
        return None

    def deleted_objects(self) -> set[tuple[str, str]]:
        """(kind, name) of the tenant's models, versions and policies marked deleted."""
        out: set[tuple[str, str]] = set()
        for kind, table in (("Model", t.model_catalog), ("ModelVersion", t.model_version),
                            ("RolloutPolicy", t.model_rollout_policy)):
            c = table.c
            out |= {(kind, str(n)) for n in self.conn.execute(select(c.name).where(
                c.tenant_id == self.tenant, c.deleted.is_(True))).scalars()}
        return out

    def existence_at(self, kind: str, name: str, at: datetime) -> tuple[str, str] | None:
        """(action, time) of the newest audit event about the object's existence at or before
        `at` (create, update, rename, repair, delete, restore): the audit trail is the
        store's history of existence. Its deletion says since when it was gone; a restore
        since when it is back."""
        c = t.audit_event.c
        stamp = _stamp(at)
        row = self._one(select(c.action, c.at).where(
            c.tenant_id == self.tenant, c.object_kind == kind, c.object_name == name,
            c.action.in_(("create", "update", "rename", "repair", "delete", "restore")),
            c.at <= stamp).order_by(c.seq.desc()).limit(1))
        return None if row is None else (str(row.action), str(row.at))

    def audit_events(self, f: AuditFilter | None = None,
                     limit: int | None = None) -> Iterator[AuditEvent]:
        """The tenant's audit events in chain order; with `f`, those it selects, and with
        `limit` only the newest `limit` of them (still oldest first)."""
        c = t.audit_event.c
        stmt = select(t.audit_event).where(c.tenant_id == self.tenant)
        if f is not None:
            stmt = stmt.where(*_audit_where(c, f))
        if limit is not None:
            newest = stmt.order_by(c.seq.desc()).limit(limit).subquery()
            stmt = select(newest).order_by(newest.c.seq)
        else:
            stmt = stmt.order_by(c.seq)
        for r in self.conn.execute(stmt).mappings():
            yield AuditEvent(r["tenant_id"], int(r["seq"]), r["at"], r["actor"], r["action"],
                             r["object_kind"], r["object_name"], dict(r["details"]),
                             r["prev_hash"], r["hash"])

    def verify_audit(self) -> ChainProblem | None:
        h = t.audit_head.c
        head = self._one(select(h.seq, h.hash).where(h.tenant_id == self.tenant))
        return verify_chain(self.tenant, self.audit_events(),
                            None if head is None else (int(head.seq), str(head.hash)))
