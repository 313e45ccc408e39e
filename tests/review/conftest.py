"""The corpus index and world fixtures of the worker tests, shared here."""

from tests.worker.conftest import corpus_hnsw, corpus_index, world  # noqa: F401
