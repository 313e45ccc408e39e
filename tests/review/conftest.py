"""The corpus index fixtures of the worker tests, shared here."""

from tests.worker.conftest import corpus_hnsw, corpus_index  # noqa: F401
