"""A model-based test of the control loop: random operations on Git, passes in any order.

Hypothesis' stateful testing drives the REAL planner and store (`reconcile_tenant`) on
SQLite and on PostgreSQL. The model is the desired state of two tenants as plain data
(Models, ModelVersions with stages, one RolloutPolicy per model, ReleaseRecords); rules
are what a user or the cluster does: create, update, rename and delete each kind, weight
changes, rollbacks as `cadml rollback` writes them, overrides, policy removal, passes,
and a stale pass (a view captured earlier, applied after newer passes). Every desired
state a rule commits is one `cadml validate` accepts (and the API server's transition
rules allow); a rule that would break a rule is a no-op, except `rename_through_sync`,
which passes the collision a GitOps sync goes through on purpose.

Invariants, checked after every step (each assertion message names its letter):
  (a) quiescent: after a fresh pass of the latest desired state, the store equals it
      (live rows, stages, the current snapshot's routes and source);
  (b) one-stable: never two STABLE versions of one model among live rows;
  (c) monotonic: a model's policyVersion only rises;
  (d) no-stale-publish: after a stale pass, rows and routing still are the newest pass's;
  (e) history: snapshot and audit counts never fall, recorded runs stay;
  (f) no-double-audit: a pass of an unchanged desired state writes no audit row;
  (g) audit chain: `store.verify_audit` finds no problem;
  (h) status: after quiescence, `cadml status` lists no name the tenant no longer has (a
      desired object, or a soft-deleted row: shown deleted), and every desired object.
A reconcile that raises on a valid desired state is a violation; on an invalid one (the
deliberate collision) it is tolerated; a stale pass may be refused with a retryable error.

CADML_MODEL_EXAMPLES / CADML_MODEL_STEPS raise the number of examples and steps per
example for a longer local run (defaults: 30 examples of at most 20 steps per engine).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from controller.api.v1alpha1 import KINDS, Resource
from controller.errors import CadmlError
from controller.reconcile.step import findings_for, reconcile_tenant
from controller.records import RunRecord
from controller.routing import ROLLBACK_ANNOTATION
from controller.store import tables as t
from controller.store.repository import StoreTx
from controller.validation.single import check_transition
from tests.conftest import NOW, ROOT
from tests.stores import Backend, open_postgresql, open_sqlite

TENANTS = ("tenant-a", "tenant-b")
SEMVERS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0")
SHA = "a" * 64
PICK = st.integers(min_value=0, max_value=7)  # an index into a list, taken modulo its length

SETTINGS = settings(
    max_examples=int(os.environ.get("CADML_MODEL_EXAMPLES", "30")),
    stateful_step_count=int(os.environ.get("CADML_MODEL_STEPS", "20")),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow `explain`
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=DirectoryBasedExampleDatabase(str(ROOT / ".cache" / "hypothesis")),  # ignored
)

Key = tuple[str, str]  # (kind, metadata.name)


@dataclass
class Obj:
    """One desired object: its spec, the generation the API server gave it, annotations."""

    spec: dict[str, Any]
    generation: int = 1
    annotations: dict[str, str] = field(default_factory=dict)


Desired = dict[Key, Obj]


@dataclass(frozen=True)
class View:
    """A tenant's desired state as a pass saw it: `rev` counts the tenant's commits."""

    tenant: str
    rev: int
    desired: Desired


# ---------------------------------------------------------------- desired-state helpers


def _model(key: str) -> dict[str, Any]:
    return {"modelKey": key, "provider": "p", "displayName": key,
            "thresholdDefaults": {"similarity": 0.8}}


def _version(model: str, semver: str, stage: str) -> dict[str, Any]:
    """The artifact is the semver's (a version re-created after its deletion, under any name
    or model name, brings back the artifact it served: version.artifact-immutable)."""
    return {"modelRef": model, "version": semver, "stage": stage,
            "artifact": {"uri": f"s3://b/{semver}", "sha256": SHA, "format": "npz"}}


def _release(version_name: str, release_id: str) -> dict[str, Any]:
    return {"releaseId": release_id, "gitSha": "4f1c2ab",
            "artifacts": {"modelRef": version_name}, "evalSetRef": "golden@1",
            "evalReportUri": "s3://eval/report.html", "approvers": ["tl-ml"],
            "canaryPercent": 10, "changeSummary": "a release", "riskLevel": "low",
            "evidence": {"evalScore": 0.95, "evalThreshold": 0.9, "injectionSuccessRate": 0,
                         "costPerCaseDeltaPercent": 0}}


def _initial() -> Desired:
    return {
        ("Model", "m0"): Obj(_model("k0")),
        ("ModelVersion", "m0-1-0-0"): Obj(_version("m0", "1.0.0", "STABLE")),
        ("ModelVersion", "m0-1-1-0"): Obj(_version("m0", "1.1.0", "CANARY")),
        ("RolloutPolicy", "m0"): Obj({"modelRef": "m0", "weights": [
            {"version": "1.0.0", "weight": 90}, {"version": "1.1.0", "weight": 10}]}),
        ("ReleaseRecord", "rel-0"): Obj(_release("m0-1-0-0", "rel_0")),
    }


def resources_of(tenant: str, desired: Desired) -> list[Resource]:
    out: list[Resource] = []
    for (kind, name), obj in sorted(desired.items()):
        out.append(KINDS[kind].model_validate({
            "apiVersion": "cadml.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": tenant, "generation": obj.generation,
                         "annotations": dict(obj.annotations)},
            "spec": copy.deepcopy(obj.spec)}))
    return out


def names(desired: Desired, kind: str) -> list[str]:
    return sorted(n for k, n in desired if k == kind)


def versions_of(desired: Desired, model: str) -> dict[str, tuple[str, str]]:
    """semver → (object name, stage) of a model's versions."""
    return {o.spec["version"]: (n, o.spec["stage"]) for (k, n), o in desired.items()
            if k == "ModelVersion" and o.spec["modelRef"] == model}


def policy_of(desired: Desired, model: str) -> str | None:
    return next((n for (k, n), o in desired.items()
                 if k == "RolloutPolicy" and o.spec["modelRef"] == model), None)


def stable_of(desired: Desired, model: str) -> str | None:
    return next((sv for sv, (_, st_) in versions_of(desired, model).items()
                 if st_ == "STABLE"), None)


def expected_routing(desired: Desired, model: str) -> tuple[str, list[tuple[str, int]]] | None:
    """(source, [(semver, weight)]) the workers must route by, written from the design
    (override > rollback > weights; no policy: 100 % STABLE, source `default`)."""
    stages = {sv: s for sv, (_, s) in versions_of(desired, model).items()}
    pname = policy_of(desired, model)
    if pname is None:
        stable = stable_of(desired, model)
        return ("default", [(stable, 100)]) if stable else None
    policy = desired[("RolloutPolicy", pname)]
    ov = policy.spec.get("override")
    if ov:
        return "override", [(ov["version"], 100)]
    routes = [(w["version"], w["weight"]) for w in policy.spec["weights"]]
    if policy.annotations.get(ROLLBACK_ANNOTATION) and len(routes) == 1 \
            and stages.get(routes[0][0]) == "STABLE":
        return "rollback", routes
    return "policy", routes


def validation_errors(tenant: str, old: Desired, new: Desired) -> list[str]:
    """What `cadml validate` (and the API server's transition rules) say about `new`."""
    resources = resources_of(tenant, new)
    errors = [f"{e.obj.name}: {e.rule}" for e in findings_for(resources, NOW)
              if e.severity == "error"]
    before = {(r.kind, r.metadata.name): r for r in resources_of(tenant, old)}
    for r in resources:
        prev = before.get((r.kind, r.metadata.name))
        if prev is not None:
            errors += [f"{r.metadata.name}: {e.rule}" for e in check_transition(prev, r)]
    return errors


# ---------------------------------------------------------------- store reads


def _count(tx: StoreTx, table: Any) -> int:
    return int(tx.conn.execute(select(func.count()).select_from(table)
                               .where(table.c.tenant_id == tx.tenant)).scalar_one())


@dataclass(frozen=True)
class Seen:
    """What the store holds for one tenant, reduced to what the invariants compare."""

    models: set[str]
    versions: dict[str, tuple[str, str, str, int]]  # live: name → (model, semver, stage, gen)
    policies: dict[str, int]  # live: name → generation
    releases: set[str]  # release ids
    routes: dict[str, tuple[str, list[tuple[str, int]], int]]  # model → (source, routes, pv)
    snapshots: int
    audits: int
    runs: int
    statuses: set[Key]  # (kind, name) of every stored status
    deleted: set[Key]  # soft-deleted models, versions and policies


def read_store(b: Backend, tenant: str) -> Seen:
    """The rows (plain selects: cheaper than a whole `observe()`), what each live model's
    workers serve through the store's API, and the history counts."""
    mc, mv, pc = t.model_catalog.c, t.model_version.c, t.model_rollout_policy.c
    with b.store.transaction(tenant, "model-test") as tx:
        model_names = dict(tx.conn.execute(select(mc.id, mc.name).where(mc.tenant_id == tenant)
                                           ).all())
        live_models = set(tx.conn.execute(select(mc.name).where(
            mc.tenant_id == tenant, mc.deleted.is_(False))).scalars())
        versions = {r.name: (model_names[r.model_id], r.version, r.stage, r.generation)
                    for r in tx.conn.execute(select(mv.name, mv.model_id, mv.version, mv.stage,
                                                    mv.generation).where(
                        mv.tenant_id == tenant, mv.deleted.is_(False)))}
        policies = dict(tx.conn.execute(select(pc.name, pc.generation).where(
            pc.tenant_id == tenant, pc.deleted.is_(False))).all())
        releases = set(tx.conn.execute(select(t.release_record.c.release_id).where(
            t.release_record.c.tenant_id == tenant)).scalars())
        # what the workers route by: the live policy's snapshot, or the default routing
        serving = {m: tx.serving_snapshot(m) for m in sorted(live_models)}
        snaps = {m: s for m, s in serving.items() if s is not None}
        return Seen(
            models=live_models, versions=versions, policies=policies, releases=releases,
            routes={m: (s.source, [(r.version, r.weight) for r in s.routes], s.policy_version)
                    for m, s in snaps.items()},
            snapshots=_count(tx, t.policy_snapshot), audits=_count(tx, t.audit_event),
            runs=tx.count_runs(), statuses=set(tx.statuses()), deleted=tx.deleted_objects())


# ---------------------------------------------------------------- the state machine


class ControlLoop(RuleBasedStateMachine):
    """Desired state of two tenants, mutated by rules; passes reconcile it into a store."""

    open_backend: Callable[[], Backend]  # set per engine by `machine_for`
    views = Bundle("views")

    def __init__(self) -> None:
        super().__init__()
        self.backend = type(self).open_backend()
        self.desired: dict[str, Desired] = {tn: _initial() for tn in TENANTS}
        self.rev = dict.fromkeys(TENANTS, 0)
        self.applied: dict[str, View | None] = dict.fromkeys(TENANTS)  # newest pass applied
        self.stale_since_fresh = dict.fromkeys(TENANTS, False)
        self.serial = 0
        self.clock = NOW
        self.max_pv: dict[tuple[str, str], int] = {}
        self.history = dict.fromkeys(TENANTS, (0, 0))  # (snapshots, audits)
        self.runs = dict.fromkeys(TENANTS, 0)
        self.seen: dict[str, Seen] = {}  # the store as last read; dropped on every write

    def teardown(self) -> None:
        self.backend.close()

    # -------------------------------------------------------------- helpers

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    def _commit(self, tenant: str, new: Desired, what: str) -> bool:
        """Make `new` the tenant's desired state if `cadml validate` accepts it; the API
        server raises metadata.generation of every object whose spec changed."""
        old = self.desired[tenant]
        for key, obj in new.items():
            prev = old.get(key)
            obj.generation = 1 if prev is None else (
                prev.generation + (prev.spec != obj.spec))
        errors = validation_errors(tenant, old, new)
        if errors:
            note(f"skipped {what} in {tenant}: {'; '.join(errors[:3])}")
            return False
        self.desired[tenant] = new
        self.rev[tenant] += 1
        return True

    def _copy(self, tenant: str) -> Desired:
        return copy.deepcopy(self.desired[tenant])

    def _pick(self, tenant: str, kind: str, i: int) -> str | None:
        found = names(self.desired[tenant], kind)
        return found[i % len(found)] if found else None

    def _delete(self, tenant: str, kind: str, i: int) -> None:
        name = self._pick(tenant, kind, i)
        if name is not None:
            new = self._copy(tenant)
            del new[(kind, name)]
            self._commit(tenant, new, f"delete {kind} {name}")

    def _rename(self, tenant: str, kind: str, i: int, stem: Callable[[str, Obj], str]) -> None:
        """The same spec and annotations under a new metadata.name, in one commit."""
        name = self._pick(tenant, kind, i)
        if name is not None:
            new = self._copy(tenant)
            obj = new.pop((kind, name))
            new[(kind, f"{stem(name, obj)}-r{self._next()}")] = Obj(
                obj.spec, annotations=obj.annotations)
            self._commit(tenant, new, f"rename {kind} {name}")

    def _reconcile(self, tenant: str, desired: Desired) -> None:
        self.clock += timedelta(seconds=1)
        self.seen.pop(tenant, None)
        resources = resources_of(tenant, desired)
        reconcile_tenant(self.backend.store, tenant, resources,
                         findings_for(resources, self.clock), self.clock, "model-test")

    def _pass(self, view: View) -> None:
        """Apply a view; classify what it did (fresh, duplicate, stale)."""
        tn = view.tenant
        newest = self.applied[tn]
        stale = newest is not None and view.rev < newest.rev
        quiet = (newest is not None and view.rev == newest.rev == self.rev[tn]
                 and not self.stale_since_fresh[tn])
        before = self._read(tn) if quiet else None
        try:
            self._reconcile(tn, view.desired)
        except CadmlError as exc:
            if stale and exc.retryable:  # the generation guard refused it: requeue
                return
            raise AssertionError(
                f"(pass) reconcile of a valid desired state of {tn} (rev {view.rev}"
                f"{', stale' if stale else ''}) raised {type(exc).__name__}: {exc}") from exc
        if stale:
            self.stale_since_fresh[tn] = True
            return
        self.applied[tn] = view
        self.stale_since_fresh[tn] = False
        if before is not None:
            after = self._read(tn)
            assert after.audits == before.audits, (
                f"(f) no-double-audit: a pass of the unchanged desired state of {tn} wrote "
                f"{after.audits - before.audits} audit rows")
            assert after.snapshots == before.snapshots, (
                f"(f) no-double-audit: a pass of the unchanged desired state of {tn} published "
                f"{after.snapshots - before.snapshots} snapshots")

    # -------------------------------------------------------------- passes

    @rule(target=views, tenant=st.sampled_from(TENANTS))
    def reconcile_pass(self, tenant: str) -> View:
        """A pass of the tenant's current desired state; the view it read may be applied
        again later (`stale_pass`), as a late duplicate of this pass."""
        view = View(tenant, self.rev[tenant], self._copy(tenant))
        self._pass(view)
        return view

    @rule(target=views, tenant=st.sampled_from(TENANTS))
    def capture_view(self, tenant: str) -> View:
        return View(tenant, self.rev[tenant], self._copy(tenant))

    @rule(view=views)
    def stale_pass(self, view: View) -> None:
        """A pass that read its view earlier commits now (maybe after newer passes): the
        same objects, older generations of some. The store's guard is by generation of
        one object; a view that lacks objects created since or still holds objects deleted
        since cannot be told apart from a newer one by the store: the operator keeps those
        out (finalized uids, kopf's index), so such views are not generated here."""
        if set(view.desired) != set(self.desired[view.tenant]):
            note(f"stale_pass: skipped (the set of objects of {view.tenant} changed since)")
            return
        self._pass(view)

    @rule()
    def settle(self) -> None:
        """Quiescence: a fresh pass of every tenant's latest desired state."""
        for tn in TENANTS:
            self._pass(View(tn, self.rev[tn], self._copy(tn)))

    # -------------------------------------------------------------- models

    @rule(tenant=st.sampled_from(TENANTS))
    def create_model(self, tenant: str) -> None:
        n = self._next()
        new = self._copy(tenant)
        new[("Model", f"m{n}")] = Obj(_model(f"k{n}"))
        self._commit(tenant, new, "create_model")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK,
          similarity=st.sampled_from([0.7, 0.8, 0.9]))
    def update_model(self, tenant: str, i: int, similarity: float) -> None:
        name = self._pick(tenant, "Model", i)
        if name is None:
            return
        new = self._copy(tenant)
        new[("Model", name)].spec["thresholdDefaults"] = {"similarity": similarity}
        self._commit(tenant, new, "update_model")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def rename_model(self, tenant: str, i: int) -> None:
        """The model (same modelKey) moves to a new name; modelRef is immutable, so its
        versions, policy and release records are re-created under new names too."""
        old_name = self._pick(tenant, "Model", i)
        if old_name is None:
            return
        new_name = f"m{self._next()}"
        old = self.desired[tenant]
        new: Desired = {}
        moved: dict[str, str] = {}
        for (kind, name), obj in old.items():
            spec = copy.deepcopy(obj.spec)
            if kind == "Model" and name == old_name:
                new[(kind, new_name)] = Obj(spec)
            elif kind == "ModelVersion" and spec["modelRef"] == old_name:
                spec["modelRef"] = new_name
                moved[name] = f"{new_name}-{spec['version'].replace('.', '-')}"
                new[(kind, moved[name])] = Obj(spec)
            elif kind == "RolloutPolicy" and spec["modelRef"] == old_name:
                spec["modelRef"] = new_name
                new[(kind, new_name)] = Obj(spec, annotations=dict(obj.annotations))
            else:
                new[(kind, name)] = Obj(spec, obj.generation, dict(obj.annotations))
        for (kind, name), obj in list(new.items()):
            if kind == "ReleaseRecord" and obj.spec["artifacts"]["modelRef"] in moved:
                del new[(kind, name)]
                obj.spec["artifacts"]["modelRef"] = moved[obj.spec["artifacts"]["modelRef"]]
                new[(kind, f"rel-{self._next()}")] = Obj(obj.spec)
        self._commit(tenant, new, "rename_model")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def delete_model(self, tenant: str, i: int) -> None:
        self._delete(tenant, "Model", i)

    # -------------------------------------------------------------- versions

    @rule(tenant=st.sampled_from(TENANTS), i=PICK, j=PICK,
          stage=st.sampled_from(["DRAFT", "CANARY", "STABLE"]))
    def create_version(self, tenant: str, i: int, j: int, stage: str) -> None:
        model = self._pick(tenant, "Model", i)
        if model is None:
            return
        free = [sv for sv in SEMVERS if sv not in versions_of(self.desired[tenant], model)]
        if not free:
            return
        semver = free[j % len(free)]
        new = self._copy(tenant)
        new[("ModelVersion", f"{model}-{semver.replace('.', '-')}-{self._next()}")] = Obj(
            _version(model, semver, stage))
        self._commit(tenant, new, "create_version")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK,
          similarity=st.sampled_from([0.7, 0.8, 0.9]))
    def update_version(self, tenant: str, i: int, similarity: float) -> None:
        name = self._pick(tenant, "ModelVersion", i)
        if name is None:
            return
        new = self._copy(tenant)
        new[("ModelVersion", name)].spec["thresholdDefaults"] = {"similarity": similarity}
        self._commit(tenant, new, "update_version")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK,
          stage=st.sampled_from(["DRAFT", "CANARY", "STABLE", "DEPRECATED"]))
    def move_stage(self, tenant: str, i: int, stage: str) -> None:
        name = self._pick(tenant, "ModelVersion", i)
        if name is None:
            return
        new = self._copy(tenant)
        new[("ModelVersion", name)].spec["stage"] = stage
        self._commit(tenant, new, "move_stage")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def promote(self, tenant: str, i: int) -> None:
        """`cadml promote`: a CANARY becomes STABLE, the old STABLE DEPRECATED, and the
        policy gives the new stable what the old one and this canary had."""
        canaries = [(n, o) for (k, n), o in sorted(self.desired[tenant].items())
                    if k == "ModelVersion" and o.spec["stage"] == "CANARY"]
        if not canaries:
            return
        name, obj = canaries[i % len(canaries)]
        model, semver = obj.spec["modelRef"], obj.spec["version"]
        new = self._copy(tenant)
        for (k, _), o in new.items():
            if k == "ModelVersion" and o.spec["modelRef"] == model \
                    and o.spec["stage"] == "STABLE":
                o.spec["stage"] = "DEPRECATED"
        new[("ModelVersion", name)].spec["stage"] = "STABLE"
        pname = policy_of(new, model)
        if pname is not None:
            stages = {sv: s for sv, (_, s) in versions_of(new, model).items()}
            spec = new[("RolloutPolicy", pname)].spec
            others = [w for w in spec["weights"]
                      if w["version"] != semver and stages.get(w["version"]) == "CANARY"]
            spec["weights"] = [{"version": semver,
                                "weight": 100 - sum(w["weight"] for w in others)}, *others]
            spec.pop("override", None)
        self._commit(tenant, new, "promote")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def rename_version(self, tenant: str, i: int) -> None:
        """The same spec under a new metadata.name, in one commit."""
        self._rename(tenant, "ModelVersion", i, lambda name, _: name.split("-r")[0])

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def rename_through_sync(self, tenant: str, i: int) -> None:
        """A rename as `kubectl apply --prune` performs it: the new name is applied while
        the old one still exists (semver collision: invalid, a pass must not wedge on it),
        then the old one is pruned."""
        name = self._pick(tenant, "ModelVersion", i)
        if name is None:
            return
        renamed = f"{name.split('-r')[0]}-r{self._next()}"
        both = self._copy(tenant)
        spec = copy.deepcopy(both[("ModelVersion", name)].spec)
        both[("ModelVersion", renamed)] = Obj(spec)
        after = self._copy(tenant)
        after.pop(("ModelVersion", name))
        after[("ModelVersion", renamed)] = Obj(copy.deepcopy(spec))
        if validation_errors(tenant, self.desired[tenant], after):
            return  # the rename itself breaks a rule (e.g. a release names the old object)
        try:
            self._reconcile(tenant, both)
        except CadmlError as exc:  # the collision is invalid: a refusal is tolerated
            note(f"collision pass in {tenant} raised {type(exc).__name__}: {exc}")
        else:  # the newest pass applied the current state plus the (stalled) newcomer
            self.applied[tenant] = View(tenant, self.rev[tenant], both)
            self.stale_since_fresh[tenant] = False
        self._commit(tenant, after, "rename_through_sync")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def delete_version(self, tenant: str, i: int) -> None:
        self._delete(tenant, "ModelVersion", i)

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def delete_then_recreate_version(self, tenant: str, i: int) -> None:
        """A version deleted in one commit (and reconciled), then the same spec under a new
        name in the next: the store resurrects its row (same model and semver)."""
        name = self._pick(tenant, "ModelVersion", i)
        if name is None:
            return
        spec = copy.deepcopy(self.desired[tenant][("ModelVersion", name)].spec)
        new = self._copy(tenant)
        del new[("ModelVersion", name)]
        if not self._commit(tenant, new, f"delete {name} (to re-create it)"):
            return
        self._pass(View(tenant, self.rev[tenant], self._copy(tenant)))
        again = self._copy(tenant)
        again[("ModelVersion", f"{name.split('-r')[0]}-r{self._next()}")] = Obj(spec)
        self._commit(tenant, again, f"re-create {name} under a new name")

    # -------------------------------------------------------------- policies

    def _policy_edit(self, tenant: str, i: int, what: str,
                     edit: Callable[[Desired, str, Obj], None]) -> None:
        name = self._pick(tenant, "RolloutPolicy", i)
        if name is None:
            return
        new = self._copy(tenant)
        edit(new, new[("RolloutPolicy", name)].spec["modelRef"], new[("RolloutPolicy", name)])
        self._commit(tenant, new, what)

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def create_policy(self, tenant: str, i: int) -> None:
        model = self._pick(tenant, "Model", i)
        if model is None or policy_of(self.desired[tenant], model) is not None:
            return
        stable = stable_of(self.desired[tenant], model)
        if stable is None:
            return
        new = self._copy(tenant)
        new[("RolloutPolicy", f"{model}-p{self._next()}")] = Obj(
            {"modelRef": model, "weights": [{"version": stable, "weight": 100}]})
        self._commit(tenant, new, "create_policy")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK, j=PICK,
          canary=st.integers(min_value=0, max_value=99))
    def set_weights(self, tenant: str, i: int, j: int, canary: int) -> None:
        """A valid weight change: the STABLE takes the rest of one canary's 1..99 (or
        everything); the rollback annotation goes with the manual edit."""
        def edit(new: Desired, model: str, policy: Obj) -> None:
            vs = versions_of(new, model)
            stable = stable_of(new, model)
            canaries = sorted(sv for sv, (_, s) in vs.items() if s == "CANARY")
            weights = [{"version": stable, "weight": 100}]
            if canary and canaries:
                weights = [{"version": stable, "weight": 100 - canary},
                           {"version": canaries[j % len(canaries)], "weight": canary}]
            policy.spec["weights"] = weights
            policy.annotations.pop(ROLLBACK_ANNOTATION, None)
        self._policy_edit(tenant, i, "set_weights", edit)

    @rule(tenant=st.sampled_from(TENANTS), i=PICK, reinstate=st.booleans())
    def rollback(self, tenant: str, i: int, reinstate: bool) -> None:
        """What `cadml rollback` commits: 100 % to the STABLE version (or an earlier,
        DEPRECATED one reinstated), the override dropped, the reason annotated."""
        n = self._next()

        def edit(new: Desired, model: str, policy: Obj) -> None:
            vs = versions_of(new, model)
            target = stable_of(new, model)
            deprecated = sorted(sv for sv, (_, s) in vs.items() if s == "DEPRECATED")
            if reinstate and deprecated:
                for vname, s in vs.values():
                    if s == "STABLE":
                        new[("ModelVersion", vname)].spec["stage"] = "DEPRECATED"
                target = deprecated[-1]
                new[("ModelVersion", vs[target][0])].spec["stage"] = "STABLE"
            policy.spec["weights"] = [{"version": target, "weight": 100}]
            policy.spec.pop("override", None)
            policy.annotations[ROLLBACK_ANNOTATION] = f"rollback {n}"
        self._policy_edit(tenant, i, "rollback", edit)

    @rule(tenant=st.sampled_from(TENANTS), i=PICK, j=PICK)
    def set_override(self, tenant: str, i: int, j: int) -> None:
        n = self._next()

        def edit(new: Desired, model: str, policy: Obj) -> None:
            routable = sorted(sv for sv, (_, s) in versions_of(new, model).items()
                              if s in ("CANARY", "STABLE"))
            if routable:
                policy.spec["override"] = {"version": routable[j % len(routable)],
                                           "reason": f"override {n}"}
        self._policy_edit(tenant, i, "set_override", edit)

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def clear_override(self, tenant: str, i: int) -> None:
        self._policy_edit(tenant, i, "clear_override",
                          lambda new, model, policy: policy.spec.pop("override", None))

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def rename_policy(self, tenant: str, i: int) -> None:
        self._rename(tenant, "RolloutPolicy", i, lambda _, obj: f"{obj.spec['modelRef']}-p")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def delete_policy(self, tenant: str, i: int) -> None:
        self._delete(tenant, "RolloutPolicy", i)

    # -------------------------------------------------------------- release records

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def create_release(self, tenant: str, i: int) -> None:
        version = self._pick(tenant, "ModelVersion", i)
        if version is None:
            return
        n = self._next()
        new = self._copy(tenant)
        new[("ReleaseRecord", f"rel-{n}")] = Obj(_release(version, f"rel_{n}"))
        self._commit(tenant, new, "create_release")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def rename_release(self, tenant: str, i: int) -> None:
        """The same release (same releaseId) under a new metadata.name."""
        self._rename(tenant, "ReleaseRecord", i, lambda _, __: "rel")

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def delete_release(self, tenant: str, i: int) -> None:
        self._delete(tenant, "ReleaseRecord", i)

    # -------------------------------------------------------------- runs

    @rule(tenant=st.sampled_from(TENANTS), i=PICK)
    def record_runs(self, tenant: str, i: int) -> None:
        """Workers record runs under the current snapshot; history must keep them."""
        routes = self._read(tenant).routes
        live = sorted(m for m, (_, rs, _) in routes.items() if rs)
        if not live:
            return
        model = live[i % len(live)]
        _, rs, pv = routes[model]
        with self.backend.store.transaction(tenant, "worker") as tx:
            tx.record_runs([RunRecord(model, rs[0][0], pv, "policy", {}, 12.0, True, True)])
        self.seen.pop(tenant, None)
        self.runs[tenant] += 1

    # -------------------------------------------------------------- invariants

    def _read(self, tenant: str) -> Seen:
        if tenant not in self.seen:
            self.seen[tenant] = read_store(self.backend, tenant)
        return self.seen[tenant]

    @invariant()
    def invariants(self) -> None:
        for tn in TENANTS:
            fresh = tn not in self.seen
            seen = self._read(tn)
            if fresh:  # the store changed since the last check
                self._one_stable(tn, seen)
                self._monotonic(tn, seen)
                self._history(tn, seen)
                problem = self.backend.store.verify_audit(tn)
                assert problem is None, f"(g) audit chain: verify_audit({tn}): {problem}"
            newest = self.applied[tn]
            if newest is None:
                continue
            if self.stale_since_fresh[tn]:
                self._no_stale_publish(tn, seen, newest)
            elif newest.rev == self.rev[tn]:
                self._quiescent(tn, seen)

    def _one_stable(self, tn: str, seen: Seen) -> None:
        stables: dict[str, list[str]] = {}
        for name, (model, _, stage, _) in seen.versions.items():
            if stage == "STABLE":
                stables.setdefault(model, []).append(name)
        two = {m: ns for m, ns in stables.items() if len(ns) > 1}
        assert not two, f"(b) one-stable: {tn} has live STABLE rows {two}"

    def _monotonic(self, tn: str, seen: Seen) -> None:
        for model, (_, _, pv) in seen.routes.items():
            before = self.max_pv.get((tn, model), 0)
            assert pv >= before, (
                f"(c) monotonic: policyVersion of {tn}/{model} went from {before} to {pv}")
            self.max_pv[(tn, model)] = pv

    def _history(self, tn: str, seen: Seen) -> None:
        snaps, audits = self.history[tn]
        assert seen.snapshots >= snaps, (
            f"(e) history: {tn} had {snaps} snapshots, now {seen.snapshots}")
        assert seen.audits >= audits, (
            f"(e) history: {tn} had {audits} audit rows, now {seen.audits}")
        assert seen.runs >= self.runs[tn], (
            f"(e) history: {tn} recorded {self.runs[tn]} runs, the store has {seen.runs}")
        self.history[tn] = (seen.snapshots, seen.audits)

    def _quiescent(self, tn: str, seen: Seen) -> None:
        d = self.desired[tn]
        want_versions = {n: (o.spec["modelRef"], o.spec["version"], o.spec["stage"])
                         for (k, n), o in d.items() if k == "ModelVersion"}
        got_versions = {n: v[:3] for n, v in seen.versions.items()}
        assert got_versions == want_versions, (
            f"(a) quiescent: live version rows of {tn} differ from the desired state: "
            f"store {got_versions}, desired {want_versions}")
        assert seen.models == set(names(d, "Model")), (
            f"(a) quiescent: live models of {tn}: store {sorted(seen.models)}, desired "
            f"{names(d, 'Model')}")
        want_policies = {n: o.generation for (k, n), o in d.items() if k == "RolloutPolicy"}
        assert seen.policies == want_policies, (
            f"(a) quiescent: live policies of {tn} (name → generation): store "
            f"{seen.policies}, desired {want_policies}")
        stray = seen.statuses - set(d) - seen.deleted
        assert not stray, f"(h) status: {tn} lists names it no longer has: {sorted(stray)}"
        assert set(d) <= seen.statuses, (
            f"(h) status: {tn} has no status for {sorted(set(d) - seen.statuses)}")
        want_releases = {o.spec["releaseId"] for (k, _), o in d.items()
                         if k == "ReleaseRecord"}
        assert want_releases <= seen.releases, (
            f"(a) quiescent: release ids of {tn} missing from the store: "
            f"{sorted(want_releases - seen.releases)}")
        for model in names(d, "Model"):
            want = expected_routing(d, model)
            got = seen.routes.get(model)
            if want is None or want[0] == "default":
                continue  # checked below, on its own line
            assert got is not None and (got[0], got[1]) == want, (
                f"(a) quiescent: routing of {tn}/{model}: store {got}, desired {want}")
        for model in names(d, "Model"):
            want = expected_routing(d, model)
            got = seen.routes.get(model)
            if want is not None and want[0] == "default":
                assert got is not None and (got[0], got[1]) == want, (
                    f"(a) quiescent, no policy: {tn}/{model} has a STABLE version and no "
                    f"RolloutPolicy: the store routes {got}, desired {want}")

    def _no_stale_publish(self, tn: str, seen: Seen, newest: View) -> None:
        d = newest.desired
        for model in names(d, "Model"):
            want = expected_routing(d, model)
            if want is None or want[0] == "default":
                continue
            got = seen.routes.get(model)
            assert got is not None and (got[0], got[1]) == want, (
                f"(d) no-stale-publish: after a stale pass the routing of {tn}/{model} is "
                f"{got}; the newest pass (rev {newest.rev}) published {want}")
        for (kind, name), obj in d.items():
            if kind == "RolloutPolicy" and name in seen.policies:
                assert seen.policies[name] >= obj.generation, (
                    f"(d) no-stale-publish: policy {tn}/{name} went back to generation "
                    f"{seen.policies[name]} from {obj.generation}")
            if kind == "ModelVersion" and name in seen.versions:
                assert seen.versions[name][3] >= obj.generation, (
                    f"(d) no-stale-publish: version {tn}/{name} went back to generation "
                    f"{seen.versions[name][3]} from {obj.generation}")


def machine_for(open_backend: Callable[[], Backend]) -> type[ControlLoop]:
    """The state machine on one engine: each example opens a store of its own."""
    return type("ControlLoopOn", (ControlLoop,), {"open_backend": staticmethod(open_backend)})


def test_control_loop_on_sqlite(tmp_path: Path) -> None:
    template = tmp_path / "template.db"
    open_sqlite(template).close()

    def open_backend() -> Backend:
        return open_sqlite(Path(mkdtemp(dir=tmp_path)) / "store.db", template)

    run_state_machine_as_test(machine_for(open_backend), settings=SETTINGS)


@pytest.mark.postgres
def test_control_loop_on_postgresql(pg_template: str) -> None:
    run_state_machine_as_test(machine_for(lambda: open_postgresql(pg_template)),
                              settings=SETTINGS)
