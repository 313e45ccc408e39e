"""Hostile YAML gets a structured error with a line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.sources import SourceFile, collect_paths
from controller.validation import validate_files
from tests.conftest import NOW

MODEL = """apiVersion: cadml.io/v1alpha1
kind: Model
metadata: {name: m, namespace: t}
spec: {modelKey: m, provider: p, displayName: M}
"""


def _rules(text: bytes | str, name: str = "in.yaml") -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    report = validate_files([SourceFile(name, data)], NOW)
    for f in report.findings:
        assert f.file == name and f.message
    return [f.rule for f in report.findings]


@pytest.mark.parametrize(("text", "rule"), [
    (MODEL.replace("provider: p", "provider: p, provider: q"), "yaml.duplicate-key"),
    ("a: 1\nb:\n  c: 1\n  c: 2\n", "yaml.duplicate-key"),
    ("[1, 2", "yaml.syntax"),
    ("a: b: c\n", "yaml.syntax"),
    ("- 1\n- 2\n", "yaml.not-a-mapping"),
    ("just a string\n", "yaml.not-a-mapping"),
    ("42\n", "yaml.not-a-mapping"),
    ("&a [*a]\n", "yaml.too-complex"),
    ("[" * 5000 + "]" * 5000, "yaml.not-a-mapping"),
    (MODEL + "status: " + "[" * 5000 + "]" * 5000 + "\n", "yaml.too-complex"),
    (MODEL.replace("cadml.io/v1alpha1", "cadml.io/v9"), "schema.api-version"),
    (MODEL.replace("kind: Model", "kind: Widget"), "schema.kind"),
    (MODEL.replace("apiVersion: cadml.io/v1alpha1\n", ""), "schema.api-version"),
    (MODEL.replace("kind: Model\n", ""), "schema.kind"),
    (MODEL + "status: {bogus: 1}\n", "schema.unknown-field"),
    (MODEL.replace("displayName: M", "displayName: M, colour: red"), "schema.unknown-field"),
    (MODEL.replace("metadata: {name: m, namespace: t}",
                   "metadata: {name: m, namespace: t, namesapce: x}"), "schema.unknown-field"),
    (MODEL.replace("modelKey: m", "modelKey: Not_A_Label"), "schema.pattern"),
    (MODEL.replace("modelKey: m", "modelKey: 12"), "schema.type"),
    (MODEL.replace("displayName: M", "displayName: M, thresholdDefaults: {s: .nan}"),
     "schema.type"),
])
def test_hostile_document_is_refused_with_a_rule(text: str, rule: str) -> None:
    assert rule in _rules(text)


def test_alias_bomb_is_refused_before_expansion() -> None:
    lines = ["a: &a [" + ", ".join(["lol"] * 10) + "]"]
    for prev, cur in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    assert _rules("\n".join(lines) + "\n") == ["yaml.too-complex"]


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00a", b"name: Stra\xdfe\n", b"\x80" * 10])
def test_non_utf8_is_refused_with_offset(raw: bytes) -> None:
    report = validate_files([SourceFile("bad.yaml", raw)], NOW)
    (err,) = report.findings
    assert err.rule == "yaml.encoding" and "offset" in err.message and err.line == 1


def test_utf8_bom_is_accepted() -> None:
    assert _rules(b"\xef\xbb\xbf" + MODEL.encode()) == []


def test_timestamps_stay_strings_like_kubectl() -> None:
    text = MODEL.replace("displayName: M", "displayName: 2026-01-01T00:00:00Z")
    assert _rules(text) == []


def test_hundred_megabyte_file_is_refused_without_reading(tmp_path: Path) -> None:
    big = tmp_path / "huge.yaml"
    with big.open("wb") as f:
        f.truncate(100 * 1024 * 1024)
    files, errors = collect_paths([str(big)], 8 * 1024 * 1024)
    assert files == [] and [e.rule for e in errors] == ["yaml.too-large"]
    assert "104857600 bytes" in errors[0].message


def test_cli_on_huge_and_binary_files_exits_1_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "huge.yaml"
    with big.open("wb") as f:
        f.truncate(100 * 1024 * 1024)
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "yaml.too-large" in out.out and "yaml.encoding" in out.out


def test_empty_file_and_empty_documents_are_fine() -> None:
    assert _rules("") == []
    assert _rules("---\n---\n" + MODEL + "---\n") == []


def test_foreign_documents_are_skipped_and_counted() -> None:
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n"
    report = validate_files([SourceFile("mixed.yaml", (deployment + "---\n" + MODEL).encode())],
                            NOW)
    assert report.findings == [] and report.foreign == 1 and report.resources == 1


def test_a_syntax_error_keeps_earlier_documents_and_names_the_line() -> None:
    report = validate_files([SourceFile("f.yaml", (MODEL + "---\nkey: [unclosed\n").encode())],
                            NOW)
    (err,) = report.findings
    assert err.rule == "yaml.syntax" and err.line is not None and err.line >= 6
    assert report.resources == 1


@pytest.mark.parametrize("text", [
    "replicaCount: 2\nimage: {tag: v1}\n",                  # a Helm values file
    "apiVersion: v2\nname: chart\nversion: 0.1.0\n",       # a Chart.yaml: other group, no kind
    "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: a}\n",
])
def test_documents_that_are_not_ours_are_skipped(text: str) -> None:
    report = validate_files([SourceFile("other.yaml", text.encode())], NOW)
    assert report.findings == [] and report.foreign == 1


def test_hidden_files_and_folders_are_not_read(tmp_path: Path) -> None:
    (tmp_path / ".pre-commit-hooks.yaml").write_text("- id: x\n")
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "ci.yaml").write_text("- broken: [\n")
    (tmp_path / "model.yaml").write_text(MODEL)
    files, errors = collect_paths([str(tmp_path)], 10**6)
    assert [Path(f.name).name for f in files] == ["model.yaml"] and errors == []
