"""The extractor identity and the feature cache's rules, as pure functions and against a
real cache folder (the end-to-end rebuild tests are in tests/cli/test_index_build.py)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from controller.cli import build_parser
from controller.cli.index_cmd import cache_root
from controller.errors import UsageError
from controller.features import InvalidDrawing, features_from_bytes
from controller.features.identity import (
    EXTRACT_SOURCE,
    FEATURE_CODE_VERSION,
    compose_extractor_version,
    extractor_version,
)
from controller.search.build import build_index
from controller.search.featurecache import (
    UNCACHED_CODES,
    FeatureCache,
    content_key,
    decode,
    encode,
)
from controller.search.progress import BuildTick, ProgressMeter, format_eta, rate_and_eta
from controller.search.stream import bounded_map, largest_first
from tests.conftest import DXF_CORPUS

BASE = (1, b"source", "1.4.5")


def test_the_installed_extractor_identity() -> None:
    assert extractor_version() == compose_extractor_version(
        FEATURE_CODE_VERSION, EXTRACT_SOURCE.read_bytes(), metadata.version("ezdxf"))
    assert re.fullmatch(rf"x{FEATURE_CODE_VERSION}-[0-9a-f]{{16}}", extractor_version())


@pytest.mark.parametrize("changed", [(2, b"source", "1.4.5"), (1, b"source ", "1.4.5"),
                                     (1, b"source", "1.4.6")],
                         ids=["code-version", "extract.py", "ezdxf"])
def test_every_ingredient_changes_the_identity(changed: tuple[int, bytes, str]) -> None:
    assert compose_extractor_version(*changed) != compose_extractor_version(*BASE)


def test_a_vector_round_trips_bit_for_bit() -> None:
    f = features_from_bytes((DXF_CORPUS / "hatches_2.dxf").read_bytes(), "v4")
    sha = content_key(b"x")
    record = encode(sha, f)
    assert record is not None
    back = decode(sha, record, "v4")
    assert isinstance(back, type(f)) and back.vector.tobytes() == f.vector.tobytes()
    assert (back.entities, back.truncated, back.recovered) == (f.entities, f.truncated,
                                                               f.recovered)
    assert decode(sha, record, "v3") is None  # another feature version is a miss
    assert decode(content_key(b"y"), record, "v4") is None  # so is another drawing's record


@pytest.mark.parametrize("code", sorted(UNCACHED_CODES))
def test_refusals_that_depend_on_the_run_are_not_cached(code: str) -> None:
    assert encode("0" * 64, InvalidDrawing("limits", code=code)) is None


def test_a_refusal_of_the_drawing_itself_is_cached_with_its_message() -> None:
    exc = InvalidDrawing("no entities", code="no_entities", context={"a": 1})
    back = decode("0" * 64, encode("0" * 64, exc), "v4")
    assert isinstance(back, InvalidDrawing)
    assert (str(back), back.code, back.stage, back.context, back.status) == (
        "no entities", "no_entities", "parse", {"a": 1}, 422)


def test_another_extractor_never_sees_the_entries(tmp_path: Path) -> None:
    data = (DXF_CORPUS / "3dface.dxf").read_bytes()
    f = features_from_bytes(data, "v4")
    ours = FeatureCache(tmp_path, "v4", extractor_version())
    ours.put(content_key(data), f)
    assert ours.get(content_key(data)) is not None
    assert FeatureCache(tmp_path, "v4", "x2-0000000000000000").get(content_key(data)) is None


def test_identical_contents_are_parsed_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.dxf", "b.dxf", "c.dxf"):
        shutil.copyfile(DXF_CORPUS / "3dface.dxf", src / name)
    ticks: list[BuildTick] = []
    built = build_index(src, tmp_path / "out", workers=2, cache=tmp_path / "cache",
                        progress=ticks.append)
    assert (built.indexed, built.parsed, built.reused) == (3, 1, 2)
    assert sorted((t.name, t.parsed) for t in ticks) == [("a.dxf", True), ("b.dxf", False),
                                                          ("c.dxf", False)]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1


@pytest.mark.parametrize(("sizes", "rows", "order"), [
    ([5, 9, 1, 9], [0, 1, 2, 3], [1, 3, 0, 2]),  # ties keep row order
    ([5, 9, 1, 9], [2, 0], [0, 2]),
    ([], [], []),
])
def test_largest_first(sizes: list[int], rows: list[int], order: list[int]) -> None:
    assert largest_first(sizes, rows) == order


def test_bounded_map_takes_jobs_lazily() -> None:
    taken: list[int] = []

    def jobs() -> Iterator[tuple[int, int]]:
        for i in range(1000):
            taken.append(i)
            yield i, i

    results = bounded_map(lambda x: x * 2, jobs(), threads=2)
    first = next(results)
    assert first[1] == first[0] * 2 and len(taken) <= 4 + 1  # a window, not the queue
    assert sorted([first, *results]) == [(i, 2 * i) for i in range(1000)]


@pytest.mark.parametrize(("parsed", "to_parse", "elapsed", "expected"), [
    (0, 10, 5.0, (0.0, None)), (5, 10, 0.0, (0.0, None)), (5, 10, 2.5, (2.0, 2.5)),
    (10, 10, 4.0, (2.5, 0.0)),
])
def test_rate_and_eta(parsed: int, to_parse: int, elapsed: float,
                      expected: tuple[float, float | None]) -> None:
    assert rate_and_eta(parsed, to_parse, elapsed) == expected


@pytest.mark.parametrize(("seconds", "text"), [(None, "ETA ?"), (0.2, "ETA 0:00:00"),
                                               (3725.4, "ETA 1:02:05")])
def test_format_eta(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_the_meter_counts_only_parsed_drawings_from_the_last_cache_hit() -> None:
    now = [100.0]
    meter = ProgressMeter(clock=lambda: now[0])
    now[0] = 130.0  # reading and cache lookups took 30 s: not parsing time
    assert meter.lines(BuildTick(1, 4, "a.dxf", "cached", False)) == []
    assert meter.lines(BuildTick(2, 4, "b.dxf", "cached", False)) == []
    now[0] = 131.0
    first = meter.lines(BuildTick(3, 4, "c.dxf", "9 entities", True))
    assert first[0] == "reused 2 cached feature vectors, parsing 2"
    assert "1.0 drawings/s ETA 0:00:01 c.dxf: 9 entities" in first[1]
    now[0] = 132.0
    assert "1.0 drawings/s ETA 0:00:00" in meter.lines(BuildTick(4, 4, "d", "x", True))[0]


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {"XDG_CACHE_HOME": "/xdg"}, Path("/xdg/cadml/features")),
    ([], {}, Path("~/.cache/cadml/features").expanduser()),
    (["--cache", "/c"], {"XDG_CACHE_HOME": "/xdg"}, Path("/c")),
    (["--no-cache"], {"XDG_CACHE_HOME": "/xdg"}, None),
])
def test_where_the_cache_is(argv: list[str], environ: dict[str, str],
                            expected: Path | None) -> None:
    args = build_parser().parse_args(["index", "build", "d", "--out", "o", *argv])
    assert cache_root(args, environ) == expected


@pytest.mark.parametrize("argv", [["--no-cache", "--resume"], ["--no-cache", "--cache", "/c"]])
def test_contradicting_cache_options_are_a_usage_error(argv: list[str]) -> None:
    args = build_parser().parse_args(["index", "build", "d", "--out", "o", *argv])
    with pytest.raises(UsageError, match="--no-cache"):
        cache_root(args, {})
