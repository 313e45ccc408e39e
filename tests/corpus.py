"""Where the real DXF drawings are: $CADML_DXF_CORPUS, else ../shared/dxf-corpus beside the
repository (the ezdxf project's drawings, MIT). Shared by the tests and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DXF_CORPUS = Path(os.environ.get("CADML_DXF_CORPUS") or ROOT.parent / "shared" / "dxf-corpus")
