"""DXF feature vectors v1..v4 (v4: 24 floats), computed by one bounded walk of the drawing.

Loading (`load_drawing`) maps every parser failure to one `InvalidDrawing`;
the walk expands INSERTs with their transforms but at most `MAX_DEPTH` levels
deep and `MAX_VISITS` entities in all, so a block that inserts itself or a
nested block bomb ends early with `truncated` set instead of running away.

v4 dimensions (v1 = 0..10, v2 = 0..15, v3 = 0..21, v4 = 0..23):
     0  log1p(entity count, INSERTs expanded)
  1..10 share of entity families: line, circle, arc, polyline, spline, ellipse,
        text (TEXT/MTEXT/ATTRIB/ATTDEF), annotation (DIMENSION/LEADER/MLEADER),
        fill (HATCH/SOLID/WIPEOUT), insert
    11  log1p(bounding-box width)      12  log1p(bounding-box height)
    13  aspect ratio min/max of the box (0 when degenerate)
    14  log1p(total line/polyline length / box diagonal)
    15  mean circle/arc radius / box diagonal
    16  log1p(total arc sweep, radians)
    17  log1p(layer count)             18  log1p(distinct colour count)
    19  share of closed polylines among polylines
    20  deepest INSERT nesting / MAX_DEPTH
    21  log1p(entities per unit of box area)
    22  surface_count: log1p(3DFACE, 3DSOLID, REGION, SURFACE, MESH, BODY, polyface meshes)
    23  shape_entropy: Shannon entropy of entity-type frequencies with Laplace
        smoothing p_i = (f_i + 1) / (N + K), normalised by log K; 0 when N = 0 or K = 1
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.errors import StructuredError

FEATURE_DIMS = {"v1": 11, "v2": 16, "v3": 22, "v4": 24}
MAX_DEPTH = 8
MAX_VISITS = 20_000
BINARY_SENTINEL = b"AutoCAD Binary DXF"

FAMILIES: tuple[frozenset[str], ...] = (
    frozenset({"LINE"}), frozenset({"CIRCLE"}), frozenset({"ARC"}),
    frozenset({"LWPOLYLINE", "POLYLINE"}), frozenset({"SPLINE"}), frozenset({"ELLIPSE"}),
    frozenset({"TEXT", "MTEXT", "ATTRIB", "ATTDEF"}),
    frozenset({"DIMENSION", "ARC_DIMENSION", "LARGE_RADIAL_DIMENSION", "LEADER", "MLEADER",
               "MULTILEADER", "TOLERANCE"}),
    frozenset({"HATCH", "SOLID", "TRACE", "WIPEOUT", "MPOLYGON"}),
    frozenset({"INSERT"}),
)
SURFACES = frozenset({"3DFACE", "3DSOLID", "REGION", "SURFACE", "MESH", "BODY",
                      "PLANESURFACE", "EXTRUDEDSURFACE", "LOFTEDSURFACE", "REVOLVEDSURFACE",
                      "SWEPTSURFACE"})


class InvalidDrawing(StructuredError):
    """The upload is not a drawing we can read (damaged beyond recovery, too large, hostile)."""

    reason = "InvalidDrawing"
    exit_code = 1

    def __init__(self, message: str, *, code: str = "invalid_drawing", stage: str = "parse",
                 context: dict[str, Any] | None = None, status: int = 422) -> None:
        super().__init__(message, code=code, stage=stage, context=context)
        self.status = status


@dataclass
class Loaded:
    doc: Any
    recovered: bool


def load_drawing(data: bytes, *, max_bytes: int = 50 * 1024 * 1024) -> Loaded:
    """ASCII or binary DXF from bytes; damaged files go through ezdxf.recover."""
    import ezdxf
    from ezdxf import recover
    from ezdxf.document import Drawing
    from ezdxf.filemanagement import dxf_stream_info
    from ezdxf.lldxf.tagger import binary_tags_loader

    if len(data) > max_bytes:
        raise InvalidDrawing(f"drawing is {len(data)} bytes, over the limit of {max_bytes}",
                             code="too_large", stage="upload", status=413,
                             context={"bytes": len(data), "limit": max_bytes})
    if not data.strip():
        raise InvalidDrawing("empty upload", code="empty", stage="upload", status=400)
    try:
        if data.startswith(BINARY_SENTINEL):
            return Loaded(Drawing.load(binary_tags_loader(data, errors="surrogateescape")),
                          False)
        try:
            info = dxf_stream_info(io.StringIO(data[:65536].decode("utf-8", errors="ignore")))
            text = data.decode(info.encoding, errors="surrogateescape")
            return Loaded(ezdxf.read(io.StringIO(text)), False)  # type: ignore[attr-defined]
        except MemoryError:
            raise
        except Exception:  # any failure of the strict reader: try to recover
            doc, _auditor = recover.read(io.BytesIO(data))
            return Loaded(doc, True)
    except (InvalidDrawing, MemoryError):  # out of memory is the run's limit, not the drawing
        raise
    except (Exception, RecursionError) as exc:  # every parser failure is one error
        raise InvalidDrawing(f"not a readable DXF drawing: {type(exc).__name__}: "
                             f"{str(exc)[:200]}", context={"error": type(exc).__name__}) from None


@dataclass
class _Stats:
    counts: Counter[str] = field(default_factory=Counter)
    xmin: float = math.inf
    ymin: float = math.inf
    xmax: float = -math.inf
    ymax: float = -math.inf
    length: float = 0.0
    radius_sum: float = 0.0
    radius_n: int = 0
    sweep: float = 0.0
    layers: set[str] = field(default_factory=set)
    colors: set[int] = field(default_factory=set)
    polylines: int = 0
    closed: int = 0
    surfaces: int = 0
    depth: int = 0
    visits: int = 0
    truncated: bool = False

    def point(self, x: float, y: float) -> None:
        if math.isfinite(x) and math.isfinite(y) and abs(x) < 1e12 and abs(y) < 1e12:
            self.xmin, self.xmax = min(self.xmin, x), max(self.xmax, x)
            self.ymin, self.ymax = min(self.ymin, y), max(self.ymax, y)


def _dist(a: Any, b: Any) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _visit(entity: Any, stats: _Stats, m: Any, depth: int, doc: Any) -> None:
    """Record one entity (points transformed by `m`, None = identity)."""
    kind = entity.dxftype()
    stats.counts[kind] += 1
    dxf = entity.dxf
    stats.layers.add(str(dxf.get("layer", "0")))
    stats.colors.add(int(dxf.get("color", 256)))

    def pts(points: Any) -> list[Any]:
        out = [m.transform(p) for p in points] if m is not None else list(points)
        for p in out:
            stats.point(p[0], p[1])
        return out

    if kind == "LINE":
        a, b = pts([dxf.start, dxf.end])
        stats.length += _dist(a, b)
    elif kind in ("CIRCLE", "ARC"):
        c, r = dxf.center, abs(float(dxf.radius))
        pts([(c[0] - r, c[1] - r, 0), (c[0] + r, c[1] + r, 0)])
        if r > 0 and math.isfinite(r):
            stats.radius_sum += r
            stats.radius_n += 1
        if kind == "ARC":
            span = (float(dxf.end_angle) - float(dxf.start_angle)) % 360.0
            stats.sweep += math.radians(span)
    elif kind == "LWPOLYLINE":
        stats.polylines += 1
        stats.closed += bool(entity.closed)
        p = pts([(x, y, 0) for x, y in entity.get_points("xy")])
        stats.length += sum(_dist(p[i], p[i + 1]) for i in range(len(p) - 1))
    elif kind == "POLYLINE":
        if entity.is_poly_face_mesh or entity.is_polygon_mesh:
            stats.surfaces += 1
        stats.polylines += 1
        stats.closed += bool(entity.is_closed)
        p = pts([v.dxf.location for v in entity.vertices])
        stats.length += sum(_dist(p[i], p[i + 1]) for i in range(len(p) - 1))
    elif kind == "SPLINE":
        pts(list(entity.control_points) or list(entity.fit_points))
    elif kind == "ELLIPSE":
        c, major = dxf.center, dxf.major_axis
        pts([(c[0] - major[0], c[1] - major[1], 0), (c[0] + major[0], c[1] + major[1], 0)])
    elif kind in ("TEXT", "MTEXT", "ATTRIB", "ATTDEF", "POINT"):
        pts([dxf.get("insert", dxf.get("location", (0, 0, 0)))])
    elif kind in ("3DFACE", "SOLID", "TRACE"):
        pts([dxf.vtx0, dxf.vtx1, dxf.vtx2])
    elif kind == "INSERT":
        _expand(entity, stats, m, depth, doc)
    if kind in SURFACES:
        stats.surfaces += 1


def _expand(insert: Any, stats: _Stats, m: Any, depth: int, doc: Any) -> None:
    if depth >= MAX_DEPTH:
        stats.truncated = True
        return
    block = doc.blocks.get(insert.dxf.name)
    if block is None:
        return
    local = insert.matrix44()
    matrix = local if m is None else local * m
    stats.depth = max(stats.depth, depth + 1)
    _walk(block, stats, matrix, depth + 1, doc)


def _walk(entities: Any, stats: _Stats, m: Any, depth: int, doc: Any) -> None:
    for entity in entities:
        if stats.visits >= MAX_VISITS:
            stats.truncated = True
            return
        stats.visits += 1
        try:
            _visit(entity, stats, m, depth, doc)
        except (AttributeError, ValueError, TypeError, ZeroDivisionError, OverflowError,
                IndexError, KeyError):
            stats.counts["<unreadable>"] += 1  # keep going: one bad entity is not the drawing


def shape_entropy(counts: Counter[str]) -> float:
    """Normalised Shannon entropy of entity-type frequencies with Laplace smoothing."""
    k = len(counts)
    n = sum(counts.values())
    if n == 0 or k <= 1:
        return 0.0
    h = 0.0
    for f in counts.values():
        p = (f + 1) / (n + k)
        h -= p * math.log(p)
    return h / math.log(k)


@dataclass(frozen=True)
class Features:
    vector: np.ndarray
    version: str
    entities: int
    truncated: bool
    recovered: bool


def extract_features(doc: Any, version: str = "v4", *, recovered: bool = False) -> Features:
    if version not in FEATURE_DIMS:
        raise InvalidDrawing(f"unknown feature version {version!r}", code="feature_version",
                             stage="features", status=400)
    stats = _Stats()
    try:
        _walk(doc.modelspace(), stats, None, 0, doc)
    except RecursionError:
        stats.truncated = True
    n = sum(stats.counts.values())
    width = max(stats.xmax - stats.xmin, 0.0) if n and math.isfinite(stats.xmin) else 0.0
    height = max(stats.ymax - stats.ymin, 0.0) if n and math.isfinite(stats.ymin) else 0.0
    diag = math.hypot(width, height)
    fam = [sum(stats.counts[t] for t in group) / n if n else 0.0 for group in FAMILIES]
    geometric = [
        math.log1p(n), *fam,
        math.log1p(width), math.log1p(height),
        (min(width, height) / max(width, height)) if min(width, height) > 0 else 0.0,
        math.log1p(stats.length / diag) if diag > 0 else 0.0,
        (stats.radius_sum / stats.radius_n) / diag if stats.radius_n and diag > 0 else 0.0,
        math.log1p(stats.sweep),
        math.log1p(len(stats.layers)), math.log1p(len(stats.colors)),
        stats.closed / stats.polylines if stats.polylines else 0.0,
        stats.depth / MAX_DEPTH,
        math.log1p(n / (width * height + 1.0)),
    ]
    full = [*geometric, math.log1p(stats.surfaces), shape_entropy(stats.counts)]
    vector = np.nan_to_num(np.asarray(full[:FEATURE_DIMS[version]], dtype=np.float32),
                           nan=0.0, posinf=1e6, neginf=-1e6)
    return Features(np.clip(vector, -1e6, 1e6), version, n, stats.truncated, recovered)


def features_from_bytes(data: bytes, version: str = "v4", *,
                        max_bytes: int = 50 * 1024 * 1024) -> Features:
    loaded = load_drawing(data, max_bytes=max_bytes)
    if not any(True for _ in loaded.doc.modelspace()) and loaded.recovered:
        raise InvalidDrawing("no entities could be recovered (truncated, or not a DXF)",
                             code="no_entities", stage="parse")
    return extract_features(loaded.doc, version, recovered=loaded.recovered)
