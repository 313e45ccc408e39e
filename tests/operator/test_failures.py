"""How `on_change` fails: a conflict a retry cannot fix is Stalled on the object and not
retried in a hot loop; a store that is away is retried with a growing delay."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kopf
import pytest

from controller.errors import StaleWrite
from controller.operator import handlers
from controller.operator.handlers import (
    RACE_RETRIES,
    on_change,
    on_delete,
    on_version_delete,
    retry_delay,
)
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from tests.operator.test_handlers import Cluster
from tests.stores import Backend, refuse_version

DRAFT: dict[str, Any] = {
    "apiVersion": "cadml.io/v1alpha1", "kind": "ModelVersion",
    "metadata": {"name": "part-similarity-9-9-9", "namespace": "acme-cad", "uid": "uid-999",
                 "generation": 3},
    "spec": {"modelRef": "part-similarity", "version": "9.9.9", "stage": "DRAFT",
             "artifact": {"uri": "file:///var/lib/cadml/artifacts/p-9.9.9.npz",
                          "format": "npz"}, "featureVersion": "v4"},
    "status": {},
}


def _call(cluster: Cluster, body: dict[str, Any], **extra: Any) -> kopf.Patch:
    """on_change as kopf calls it; the exception propagates, the patch is returned by
    attaching it to the exception (kopf applies a handler's patch even when it fails)."""
    patch = kopf.Patch()
    try:
        on_change(body=kopf.Body(body), patch=patch, memo=cluster.memo,
                  logger=logging.getLogger("test"), **cluster.indexes(), **extra)
    except Exception as exc:
        exc.patch = patch  # type: ignore[attr-defined]
        raise
    return patch


def test_a_deterministic_conflict_is_stalled_and_not_retried(backend: Backend) -> None:
    cluster = Cluster(backend.store)
    cluster.handle("RolloutPolicy", "part-similarity")  # the tenant reconciled once
    refuse_version(backend, "9.9.9")
    cluster.bodies[("ModelVersion", "part-similarity-9-9-9")] = DRAFT
    for retry in range(RACE_RETRIES):  # first: maybe a race with a concurrent pass
        with pytest.raises(kopf.TemporaryError, match="UNIQUE") as again:
            _call(cluster, DRAFT, retry=retry)
        assert again.value.delay == 1
    with pytest.raises(kopf.PermanentError, match="UNIQUE") as failed:  # then: deterministic
        _call(cluster, DRAFT, retry=RACE_RETRIES)
    status = dict(failed.value.patch["status"])  # type: ignore[attr-defined]
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Stalled"]["status"] == "True" and by_type["Stalled"]["reason"] == "Conflict"
    assert "UNIQUE" in by_type["Stalled"]["message"]
    assert by_type["Stalled"]["observedGeneration"] == 3
    assert by_type["Ready"]["status"] == "False"


@pytest.mark.parametrize(("retry", "delay"), [
    (None, 15), (0, 15), (1, 30), (3, 120), (5, 480), (6, 600), (1000, 600)])
def test_transient_errors_back_off(retry: int | None, delay: float) -> None:
    assert retry_delay(retry) == delay


def test_an_unavailable_store_is_retried_later_and_later(tmp_path: Path) -> None:
    away = Store(make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'store.db'}"))
    cluster = Cluster(away)
    body = cluster.bodies[("RolloutPolicy", "part-similarity")]
    delays = []
    for retry in (0, 2):
        with pytest.raises(kopf.TemporaryError) as failed:
            _call(cluster, body, retry=retry)
        delays.append(failed.value.delay)
        assert not dict(failed.value.patch)  # type: ignore[attr-defined]  # no status
    assert delays == [15, 60]


def _finalize(cluster: Cluster, kind: str, name: str, **extra: Any) -> None:
    body = cluster.bodies.pop((kind, name))
    handler = on_version_delete if kind == "ModelVersion" else on_delete
    handler(body=kopf.Body(body), memo=cluster.memo, logger=logging.getLogger("test"),
            **cluster.indexes(), **extra)


@pytest.mark.parametrize(("kind", "name"), [
    ("ModelVersion", "part-similarity-1-3-0-rc-1"), ("RolloutPolicy", "assembly-match")])
def test_a_finalizer_that_loses_a_race_is_requeued_at_once(
    kind: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune deletes many objects at once; their finalizers' passes race on one tenant
    and the losers meet StaleWrite. Requeued in 1 s, as on_change does, not after kopf's
    60 s default for an unexpected error."""
    def stale(*args: Any, **kwargs: Any) -> None:
        raise StaleWrite("another pass changed the tenant")

    cluster = Cluster(Store(make_engine(f"sqlite:///{tmp_path / 'op.db'}")))
    upgrade(cluster.memo["store"].engine)
    monkeypatch.setattr(handlers, "tenant_pass", stale)
    with pytest.raises(kopf.TemporaryError) as failed:
        _finalize(cluster, kind, name)
    assert failed.value.delay == 1


def test_a_finalizer_waits_for_a_store_that_is_away(tmp_path: Path) -> None:
    cluster = Cluster(Store(make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 's.db'}")))
    with pytest.raises(kopf.TemporaryError) as failed:
        _finalize(cluster, "Model", "assembly-match", retry=1)
    assert failed.value.delay == 30
