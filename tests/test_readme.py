"""The README documents every rule id the code can emit, and its set-up commands work."""

from __future__ import annotations

from controller.api.celrules import cel_rules
from controller.api.v1alpha1 import KINDS
from controller.validation.cross import FIXABLE_LATER
from tests.conftest import ROOT, expectation, invalid_cases


def test_readme_lists_every_rule_id() -> None:
    readme = (ROOT / "README.md").read_text()
    ids = {r.rule_id for k in KINDS for r in cel_rules(k)} | set(FIXABLE_LATER)
    ids |= {expectation(p)[0] for p in invalid_cases()}
    missing = set()
    for rule in ids:
        family, _, name = rule.partition(".")
        if family in ("schema", "yaml"):
            if f"`{name}`" not in readme:
                missing.add(rule)
        elif f"`{rule}`" not in readme:
            missing.add(rule)
    assert missing == set()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/run" in readme.split("---")[0]
    assert "python3 -m pytest -q" in readme and "python3 -m pytest -q" in ci
