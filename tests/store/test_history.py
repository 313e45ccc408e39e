"""`cadml history --at`: what was STABLE and how traffic was split then; history only grows."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from controller.cli import main
from controller.records import RouteRow
from tests.store.helpers import seed_model
from tests.stores import Backend


def _moment() -> datetime:
    time.sleep(0.05)
    at = datetime.now(UTC)
    time.sleep(0.05)
    return at


def test_history_answers_for_any_moment(backend: Backend,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before_anything = _moment()
    seed_model(backend.store)  # policy v1: 1.0.0 90 / 1.1.0 10
    during_canary = _moment()
    with backend.store.transaction("acme", "alice") as tx:
        tx.set_stage("part-sim-1.0.0", "DEPRECATED")
        tx.set_stage("part-sim-1.1.0", "STABLE")
        tx.publish_snapshot("part-sim", [RouteRow("1.1.0", 100, True)], {}, "policy")
    after_promotion = _moment()
    with backend.store.transaction("acme", "bob") as tx:  # roll back: append, never rewrite
        tx.set_stage("part-sim-1.1.0", "DEPRECATED")
        tx.set_stage("part-sim-1.0.0", "STABLE")
        tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "rollback",
                            reason="INC-1")
    after_rollback = _moment()

    def at(moment: datetime) -> list[dict[str, object]]:
        code = main(["history", "--at", moment.isoformat(), "--store", backend.admin_url,
                     "--tenant", "acme", "-o", "json"])
        assert code == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    assert at(before_anything) == []
    (row,) = at(during_canary)
    assert row["stable"] == "1.0.0" and row["routing"] == {"1.0.0": 90, "1.1.0": 10}
    (row,) = at(after_promotion)
    assert row["stable"] == "1.1.0" and row["policyVersion"] == 2
    (row,) = at(after_rollback)
    assert row["stable"] == "1.0.0" and row["source"] == "rollback" and row["policyVersion"] == 3
    # history is intact: the earlier moments still answer the same after the rollback
    (row,) = at(after_promotion)
    assert row["stable"] == "1.1.0"
