"""Operator settings from the environment: a value that is not a number of the accepted
kind stops the start with one clear line naming the variable and what it accepts, exit
code 2, before anything is started (the store is not even opened)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("CADML_PERIODIC_WORKERS", "four", "a whole number of 1 or more"),
    ("CADML_PERIODIC_WORKERS", "2.5", "a whole number of 1 or more"),
    ("CADML_PERIODIC_WORKERS", "0", "a whole number of 1 or more"),
    ("CADML_ANALYSIS_INTERVAL", "1m", "a number of seconds above 0"),
    ("CADML_ANALYSIS_INTERVAL", "-5", "a number of seconds above 0"),
    ("CADML_TIMER_INTERVAL", "nan", "a number of seconds above 0"),
    ("CADML_PRIORITY", "high", "a whole number of 0 or more"),
    ("CADML_WEBHOOK_PORT", "-1", "a whole number from 1 to 65535"),
    ("CADML_WEBHOOK_PORT", "99999", "a whole number from 1 to 65535"),
    ("CADML_METRICS_PORT", "70000", "a whole number from 0 to 65535"),
    ("CADML_PERIODIC_WORKERS", "\u00b2", "a whole number of 1 or more"),  # "²".isdigit()
    ("CADML_WEBHOOK_FAILURE_POLICY", "fail-open", "Fail or Ignore"),
    ("CADML_WEBHOOK_SERVICE", "nope", "NAMESPACE/NAME[:PORT]"),
])
def test_a_malformed_number_stops_the_operator_before_it_starts(
        tmp_path: Path, name: str, value: str, accepted: str) -> None:
    store = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CADML_METRICS_PORT": "0",
           "KUBECONFIG": str(tmp_path / "none"), name: value}
    env.pop("CADML_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "controller", "run", "--store",
                           f"sqlite:///{store}"], check=False, env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert name in line and repr(value) in line and accepted in line, line
    assert not store.exists()  # nothing started: the store was not opened


@pytest.mark.parametrize("args", [["--webhook-port", "-1"], ["--metrics-port", "99999"],
                                  ["--webhook-port", "http"]])
def test_a_port_flag_outside_0_to_65535_stops_the_start_with_one_line(
        tmp_path: Path, args: list[str]) -> None:
    """Before: argparse took any int; -1 or 99999 failed later, inside the operator."""
    store = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "-m", "controller", "run", "--store",
                           f"sqlite:///{store}", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and args[0] in done.stderr
    assert "0 to 65535" in done.stderr
    assert not store.exists()


@pytest.mark.parametrize(("env", "workers", "analysis"), [
    ({}, 4, 60.0),
    ({"CADML_PERIODIC_WORKERS": " 8 ", "CADML_TIMER_INTERVAL": "2"}, 8, 2.0),
    ({"CADML_ANALYSIS_INTERVAL": "0.5", "CADML_TIMER_INTERVAL": "2"}, 4, 0.5),
    ({"CADML_PERIODIC_WORKERS": ""}, 4, 60.0),  # empty: the default, as before
    ({"CADML_PRIORITY": "0", "CADML_METRICS_PORT": "0", "CADML_WEBHOOK_PORT": "8443"},
     4, 60.0),
])
def test_well_formed_numbers_are_read(env: dict[str, str], workers: int,
                                      analysis: float) -> None:
    settings = OperatorSettings.from_env({"CADML_STORE_URL": "sqlite://", **env})
    assert (settings.periodic_workers, settings.analysis_interval) == (workers, analysis)


@pytest.mark.parametrize(("env", "analysis"), [
    ({}, 2.0), ({"CADML_TIMER_INTERVAL": "30"}, 2.0), ({"CADML_ANALYSIS_INTERVAL": "5"}, 5.0)])
def test_the_timer_interval_flag_sets_the_analysis_interval_as_its_variable_does(
        env: dict[str, str], analysis: float) -> None:
    """Before: `cadml run --timer-interval 2` repaired every 2 s but analysed every 60 s
    ($CADML_TIMER_INTERVAL=2 set both); $CADML_ANALYSIS_INTERVAL still wins."""
    settings = OperatorSettings.from_env({"CADML_STORE_URL": "sqlite://", **env},
                                         timer_interval=2.0)
    assert (settings.timer_interval, settings.analysis_interval) == (2.0, analysis)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_a_timer_interval_flag_that_is_no_positive_number_is_refused(
        tmp_path: Path, value: str) -> None:
    """`cadml run --timer-interval 0` (or negative) was taken: a repair loop without pause.
    Refused by the parser: exit 2, one usage line naming the flag, nothing started."""
    store = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "-m", "controller", "run", "--store",
                           f"sqlite:///{store}", "--timer-interval", value], check=False,
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--timer-interval" in done.stderr and "seconds above 0" in done.stderr
    assert not store.exists()
