"""The corpus index fixtures of the worker tests, shared here."""

from tests.worker.conftest import corpus_index  # noqa: F401
