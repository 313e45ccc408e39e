"""Commands that only read leave the store as they found it."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main


def test_evaluate_dry_run_prints_and_writes_nothing(gitops_repo: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from controller.store.open import open_store

    store = f"sqlite:///{gitops_repo.parent / 's.db'}"
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", store]) == 0
    assert main(["evaluate", "--dry-run", "--window", "7d", "--now", "-1d", "--store", store,
                 "-o", "json"]) == 0
    assert '"sampleSize": 0' in capsys.readouterr().out
    with open_store(store, create=False).read("acme-cad") as tx:
        assert tx.latest_evaluations() == {}
    assert main(["evaluate", "--window", "7d", "--store", store]) == 0
    with open_store(store, create=False).read("acme-cad") as tx:
        assert tx.latest_evaluations() != {}
