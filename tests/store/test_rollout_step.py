"""Where a canary plan stands, in the store: written compare-and-set, so a pass planned
from an older view never undoes a user's resume (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.errors import StaleWrite
from controller.records import ModelRow, StepState
from controller.store import Store
from tests.stores import Backend

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
PAUSED = StepState("plan-a", 3, "Paused", T0)
RESUMED = StepState("plan-a", 4, "ReadyToPromote", T0, ({"step": 3, "result": "Resumed"},),
                    (), "c1")
TIMED = StepState("plan-a", 4, "Progressing", T0)


def _model(store: Store) -> None:
    with store.transaction("acme", "t") as tx:
        tx.upsert_models([ModelRow(name="m", model_key="m", provider="p", display_name="M",
                                   description="", threshold_defaults={}, worker_replicas=1,
                                   generation=1, spec_hash="h")])


def test_a_stale_writer_cannot_undo_a_newer_step(backend: Backend) -> None:
    store = backend.store
    _model(store)
    with store.transaction("acme", "t") as tx:
        tx.save_step("m", PAUSED, None)
    with store.transaction("acme", "alice") as tx:  # the user's resume
        tx.save_step("m", RESUMED, PAUSED)
    with pytest.raises(StaleWrite), store.transaction("acme", "pass") as tx:
        tx.save_step("m", TIMED, PAUSED)  # planned from the view before the resume
    with pytest.raises(StaleWrite), store.transaction("acme", "pass") as tx:
        tx.save_step("m", TIMED, None)  # a first write racing another first write
    with store.read("acme") as tx:
        assert tx.observe().steps["m"] == RESUMED
