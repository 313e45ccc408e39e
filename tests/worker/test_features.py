"""Feature extraction on the real corpus and on damaged copies: a finite vector or a
structured error, never a crash."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import ezdxf
import numpy as np
import pytest

from controller.features import FEATURE_DIMS, InvalidDrawing, features_from_bytes, shape_entropy
from controller.features.sandbox import FeatureSandbox, SandboxLimits
from tests.conftest import DXF_CORPUS

CORPUS = sorted(DXF_CORPUS.rglob("*.dxf"))


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_every_real_drawing_gives_a_finite_v4_vector(path: Path) -> None:
    f = features_from_bytes(path.read_bytes(), "v4")
    assert f.vector.shape == (24,) and f.vector.dtype == np.float32
    assert np.isfinite(f.vector).all()
    assert 0.0 <= f.vector[23] <= 1.0 + 1e-6


@pytest.mark.parametrize("version", list(FEATURE_DIMS))
def test_versions_are_prefixes_of_v4(version: str) -> None:
    data = (DXF_CORPUS / "insert_bricscad_level_1.dxf").read_bytes()
    v4 = features_from_bytes(data, "v4").vector
    vx = features_from_bytes(data, version).vector
    assert vx.shape == (FEATURE_DIMS[version],)
    assert np.array_equal(vx, v4[: FEATURE_DIMS[version]])


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated-half":
        return data[: len(data) // 2]
    if how == "truncated-head":
        return data[:400]
    if how == "garbage-middle":
        mid = len(data) // 2
        return data[:mid] + bytes(range(256)) * 4 + data[mid:]
    if how == "numbers-broken":
        return data.replace(b"\n10\n", b"\n10\nNaN", 3).replace(b"\n20\n", b"\n20\n1e999", 3)
    if how == "latin1-bytes":
        return data.replace(b"Layer", b"L\xe4yer\xff")
    if how == "no-eof":
        return data.rsplit(b"EOF", 1)[0]
    raise ValueError(how)


DAMAGE = ["truncated-half", "truncated-head", "garbage-middle", "numbers-broken",
          "latin1-bytes", "no-eof"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["text.dxf", "hatches_2.dxf", "insert_bricscad_level_1.dxf",
                                  "3dface.dxf", "Minimal_DXF_AC1009.dxf"])
def test_damaged_copies_give_a_vector_or_a_structured_error(name: str, how: str) -> None:
    data = _damage((DXF_CORPUS / name).read_bytes(), how)
    try:
        f = features_from_bytes(data, "v4")
    except InvalidDrawing as exc:
        assert exc.code and exc.stage and str(exc)
        return
    assert f.vector.shape == (24,) and np.isfinite(f.vector).all()


@pytest.mark.parametrize("data", [b"", b"   \n", b"not a drawing at all", bytes(range(256)),
                                  b"0\nSECTION\n2\nENTITIES\n0\nENDSEC\n"])
def test_non_drawings_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidDrawing):
        features_from_bytes(data, "v4")


def test_binary_dxf_is_read(tmp_path: Path) -> None:
    doc = ezdxf.readfile(DXF_CORPUS / "multi_insert_with_attribs.dxf")
    doc.saveas(tmp_path / "bin.dxf", fmt="bin")
    data = (tmp_path / "bin.dxf").read_bytes()
    assert data.startswith(b"AutoCAD Binary DXF")
    ascii_vec = features_from_bytes((DXF_CORPUS / "multi_insert_with_attribs.dxf").read_bytes())
    assert np.allclose(features_from_bytes(data).vector, ascii_vec.vector, atol=1e-5)


def test_size_limit_refuses_huge_uploads() -> None:
    with pytest.raises(InvalidDrawing) as exc:
        features_from_bytes(b"0\n" * 1000, max_bytes=100)
    assert exc.value.code == "too_large" and exc.value.status == 413


def _bomb(levels: int, fan: int, self_insert: bool = False) -> bytes:
    doc = ezdxf.new()
    prev = None
    for i in range(levels):
        block = doc.blocks.new(f"B{i}")
        if prev is None:
            block.add_line((0, 0), (1, 1))
        else:
            for j in range(fan):
                block.add_blockref(prev, (j, 0))
        prev = f"B{i}"
    assert prev is not None
    doc.modelspace().add_blockref(prev, (0, 0))
    if self_insert:
        loop = doc.blocks.new("LOOP")
        loop.add_blockref("LOOP", (1, 0))
        doc.modelspace().add_blockref("LOOP", (0, 0))
    buf = io.StringIO()
    doc.write(buf)
    return buf.getvalue().encode()


def test_nested_block_bomb_and_self_insert_are_bounded() -> None:
    f = features_from_bytes(_bomb(7, 10, self_insert=True))  # 10^6 virtual entities
    assert f.truncated and f.entities <= 20_001
    assert np.isfinite(f.vector).all()


@pytest.mark.parametrize(("counts", "expect"), [
    ({}, 0.0),
    ({"LINE": 50}, 0.0),
    ({"LINE": 10, "CIRCLE": 10, "ARC": 10, "TEXT": 10}, 1.0),
])
def test_shape_entropy_edges(counts: dict[str, int], expect: float) -> None:
    assert shape_entropy(Counter(counts)) == pytest.approx(expect)


def test_shape_entropy_of_a_ninety_ten_split_is_below_half() -> None:
    h = shape_entropy(Counter({"LINE": 90, "CIRCLE": 10}))
    assert 0.0 < h < 0.5
    p1, p2 = 91 / 102, 11 / 102
    assert h == pytest.approx(-(p1 * math.log(p1) + p2 * math.log(p2)) / math.log(2))


def test_sandbox_limits_cpu_time_and_survives_bad_input() -> None:
    sandbox = FeatureSandbox(1, SandboxLimits(cpu_seconds=0.02))
    try:
        slow = _bomb(7, 10)  # ~0.2 s of CPU to walk its 20,000 bounded visits
        with pytest.raises(InvalidDrawing) as exc:
            sandbox.extract(slow)
        assert exc.value.code == "time_limit"
        with pytest.raises(InvalidDrawing):
            sandbox.extract(b"garbage")
        relaxed = FeatureSandbox(1, SandboxLimits(cpu_seconds=30))
        try:
            assert relaxed.extract((DXF_CORPUS / "xclip.dxf").read_bytes()).entities > 0
        finally:
            relaxed.close()
    finally:
        sandbox.close()
