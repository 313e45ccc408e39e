"""Shared fixtures: the repository's own examples are the test fixtures."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.corpus import DXF_CORPUS

__all__ = ["DXF_CORPUS"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

_EXPECT = re.compile(r"^# expect: (\S+) (\S+)$", re.M)


def expectation(path: Path) -> tuple[str, str]:
    match = _EXPECT.search(path.read_bytes().decode("latin-1"))
    assert match, f"{path} has no '# expect: RULE PATH' line"
    return match.group(1), "" if match.group(2) == "-" else match.group(2)


def invalid_cases() -> list[Path]:
    return sorted(INVALID.glob("*.yaml"))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
        env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
             "PATH": "/usr/bin:/bin:/usr/local/bin"},
    ).stdout.strip()


@pytest.fixture
def gitops_repo(tmp_path: Path) -> Path:
    """A Git repository holding a copy of examples/tenants, one commit."""
    import shutil

    repo = tmp_path / "gitops"
    shutil.copytree(EXAMPLES / "tenants", repo / "tenants")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


# Store fixtures (SQLite always, PostgreSQL when CADML_TEST_PG_URL is set) for every package.
from tests.stores import (  # noqa: E402, F401
    backend,
    pg_backend,
    pg_template,
    sqlite_backend,
    store,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say once, plainly, when the real drawings are missing (rather than dozens of
    FileNotFoundErrors)."""
    if not any(DXF_CORPUS.glob("*.dxf")):
        raise pytest.UsageError(f"no DXF drawings in {DXF_CORPUS}: the tests use the real "
                                "corpus; set CADML_DXF_CORPUS to its folder")
