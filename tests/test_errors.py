"""The error tree: errors that carry code/stage/context share one base and one JSON shape."""

from __future__ import annotations

import pytest

from controller.errors import CadmlError, StructuredError
from controller.features.extract import InvalidDrawing
from controller.search.artifacts import ArtifactError
from controller.search.fetch import FetchError
from controller.search.pickle_scan import UnsafeArtifact
from controller.worker.runtime import WorkerError


@pytest.mark.parametrize(("error", "stage", "context"), [
    (InvalidDrawing("empty upload", code="empty", stage="upload", status=400), "upload", {}),
    (UnsafeArtifact("refused", context={"global": "os.system"}), "artifact",
     {"global": "os.system"}),
    (ArtifactError("gone", code="artifact_missing", context={"uri": "file:///x"}), "artifact",
     {"uri": "file:///x"}),
    (FetchError("HTTP 404", code="artifact_missing", uri="https://h/x"), "artifact",
     {"uri": "https://h/x"}),
    (WorkerError("no such job", code="no_job", stage="request", status=404), "request", {}),
])
def test_structured_errors_share_one_envelope(error: StructuredError, stage: str,
                                              context: dict[str, str]) -> None:
    assert isinstance(error, StructuredError) and isinstance(error, CadmlError)
    assert error.as_json() == {"code": error.code, "stage": stage, "message": str(error),
                               "context": context}
