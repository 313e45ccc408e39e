"""Golden v4 vectors of the real corpus (tests/worker/golden_features.json): any change to
extraction (our code or ezdxf) fails here and says what to do: a new
FEATURE_CODE_VERSION, or an explicit re-pin (tests/worker/golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.features.identity import FEATURE_CODE_VERSION
from tests.conftest import DXF_CORPUS
from tests.worker import golden

PINNED = json.loads(golden.GOLDEN.read_text())
CORPUS = sorted(DXF_CORPUS.rglob("*.dxf"))
WHAT_TO_DO = (f"\nFeature extraction changed. If you meant it: bump FEATURE_CODE_VERSION in "
              f"controller/features/identity.py (indexes built before keep the old vectors) "
              f"and re-pin: {golden.REPIN}\nIf it is float noise that built indexes may keep: "
              f"{golden.REPIN} --keep-version")


def test_every_corpus_drawing_is_pinned() -> None:
    names = {p.relative_to(DXF_CORPUS).as_posix() for p in CORPUS}
    assert names == set(PINNED["drawings"]), f"corpus and pins differ: re-pin ({golden.REPIN})"


def test_the_pins_belong_to_the_current_feature_code_version() -> None:
    assert PINNED["featureCodeVersion"] == FEATURE_CODE_VERSION, (
        f"FEATURE_CODE_VERSION is {FEATURE_CODE_VERSION} but the golden vectors were pinned "
        f"under {PINNED['featureCodeVersion']}: re-pin ({golden.REPIN})")


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_vector_of_each_drawing_is_the_pinned_one(path: Path) -> None:
    name = path.relative_to(DXF_CORPUS).as_posix()
    diffs = golden.differences(name, PINNED["drawings"][name],
                               golden.drawing_record(path.read_bytes()))
    assert not diffs, "\n".join(diffs) + WHAT_TO_DO


def test_a_changed_dimension_or_count_is_reported() -> None:
    name = "hatches_2.dxf"
    pinned = PINNED["drawings"][name]
    assert golden.differences(name, pinned, dict(pinned)) == []
    moved = {**pinned, "v4": [*pinned["v4"][:5], pinned["v4"][5] + 1e-3, *pinned["v4"][6:]],
             "entities": pinned["entities"] + 1}
    diffs = golden.differences(name, pinned, moved)
    assert len(diffs) == 2 and "entities" in diffs[0] and "dimension 5" in diffs[1]


def test_repinning_changed_vectors_needs_a_new_version_or_an_explicit_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = json.loads(golden.GOLDEN.read_text())
    stale["drawings"]["text.dxf"]["v4"][0] += 0.5
    pins = tmp_path / "golden.json"
    pins.write_text(json.dumps(stale))
    monkeypatch.setattr(golden, "GOLDEN", pins)
    assert golden.main([]) == 1
    assert json.loads(pins.read_text()) == stale  # refused: nothing re-pinned
    assert golden.main(["--keep-version"]) == 0
    assert json.loads(pins.read_text()) == PINNED
