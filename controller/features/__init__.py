"""DXF feature extraction (ezdxf) behind one interface: versions v1..v4."""

from controller.features.extract import (
    FEATURE_DIMS,
    Features,
    InvalidDrawing,
    extract_features,
    features_from_bytes,
    load_drawing,
    shape_entropy,
)

__all__ = [
    "FEATURE_DIMS",
    "Features",
    "InvalidDrawing",
    "extract_features",
    "features_from_bytes",
    "load_drawing",
    "shape_entropy",
]
