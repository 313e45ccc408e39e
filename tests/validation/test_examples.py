"""The example GitOps repository validates clean; every invalid case fails with its rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.sources import collect_paths
from controller.validation import validate_files
from tests.conftest import EXAMPLES, NOW, expectation, invalid_cases


def _validate(*paths: Path):  # type: ignore[no-untyped-def]
    files, errors = collect_paths([str(p) for p in paths], 8 * 1024 * 1024)
    report = validate_files(files, NOW)
    report.findings[:0] = errors
    return report


def test_examples_are_valid() -> None:
    report = _validate(EXAMPLES)
    assert report.findings == []
    assert report.resources >= 20
    tenants = report.bundle.tenants()
    assert tenants == ["acme-cad", "globex-cad"]


def test_examples_cover_every_stage_and_policy_shape() -> None:
    report = _validate(EXAMPLES)
    stages = {v.spec.stage for v in report.bundle.versions()}
    assert stages == {"DRAFT", "CANARY", "STABLE", "DEPRECATED"}
    canaries_per_policy = sorted(len(p.spec.weights) - 1 for p in report.bundle.policies())
    assert 1 in canaries_per_policy and 2 in canaries_per_policy
    assert any(p.spec.override for p in report.bundle.policies())
    assert report.bundle.releases()


def test_invalid_folder_is_ignored_when_validating_examples() -> None:
    files, _ = collect_paths([str(EXAMPLES)], 10**7)
    assert not any("/invalid/" in f.name for f in files)


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda p: p.stem)
def test_invalid_case_fails_with_its_rule(case: Path) -> None:
    rule, path = expectation(case)
    report = _validate(case)
    assert not report.ok
    matching = [f for f in report.errors if f.rule == rule]
    assert matching, f"expected {rule}, got {[f.render() for f in report.findings]}"
    if path:
        assert path in {f.path for f in matching}, [f.render() for f in matching]
    for f in report.errors:
        assert f.file == str(case)
        assert f.line is not None and f.line >= 1
        assert f.message


def test_every_rule_has_a_golden_case() -> None:
    from controller.api.celrules import cel_rules
    from controller.api.v1alpha1 import KINDS
    from controller.validation.cross import FIXABLE_LATER

    covered = {expectation(p)[0] for p in invalid_cases()}
    object_rules = {r.rule_id for k in KINDS for r in cel_rules(k) if not r.transition}
    assert object_rules - covered == set()
    assert FIXABLE_LATER - covered == set()


def test_error_points_at_the_line_of_the_field() -> None:
    case = EXAMPLES / "invalid" / "policy-version-ref.yaml"
    report = _validate(case)
    (err,) = [f for f in report.errors if f.rule == "policy.version-ref"]
    line = case.read_text().splitlines()[err.line - 1]  # type: ignore[operator]
    assert "9.9.9" in line
