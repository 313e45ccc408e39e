"""One parser for every TIME on the command line: `now`, ISO 8601, or relative (`-2h`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import main
from controller.cli._common import join_time_values, parse_time
from controller.errors import UsageError

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    (None, NOW),
    ("now", NOW),
    ("NOW", NOW),
    ("-2h", NOW - timedelta(hours=2)),
    ("-7d", NOW - timedelta(days=7)),
    ("-30m", NOW - timedelta(minutes=30)),
    ("-1w", NOW - timedelta(weeks=1)),
    ("2026-11-20T08:00Z", datetime(2026, 11, 20, 8, 0, tzinfo=UTC)),
    ("2026-11-20T08:00:00+01:00", datetime(2026, 11, 20, 7, 0, tzinfo=UTC)),
    ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
])
def test_times(text: str | None, expected: datetime) -> None:
    assert parse_time(text, "--at", now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-2", "-2y", "2h", "2026-13-01"])
def test_a_bad_time_names_the_flag_and_the_forms(text: str) -> None:
    with pytest.raises(UsageError, match=r"--at .*(ISO 8601|s, m, h, d or w)"):
        parse_time(text, "--at", now=NOW)


def test_a_relative_time_after_its_flag_is_a_value() -> None:
    assert join_time_values(["history", "--at", "-2h", "-o", "json"]) == [
        "history", "--at=-2h", "-o", "json"]
    assert join_time_values(["validate", "--now", "now", "x"]) == [
        "validate", "--now", "now", "x"]


def test_history_takes_now_and_relative_times(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["db", "upgrade", "--store", store]) == 0
    capsys.readouterr()
    for at in ("now", "-2h", "2026-11-22T12:00Z"):
        assert main(["history", "--at", at, "--store", store]) == 0, at
        assert capsys.readouterr().out.startswith("as of ")

