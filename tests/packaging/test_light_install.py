"""The base install, as a pull-request check gets it: a fresh virtual environment with
`pip install cadml` and no extra runs validate, diff and Git-mode reconcile on the
examples, and a command that needs an extra says which one.

The environment is built once per pyproject.toml (its hash names the folder under
~/.cache/cadml-venv) from the pip index; later runs reuse it. The code under test is this
checkout's (PYTHONPATH), the dependencies are only those of the base install."""

from __future__ import annotations

import hashlib
import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, git

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_python() -> Path:
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    home = Path(os.environ.get("CADML_VENV_CACHE", Path.home() / ".cache" / "cadml-venv"))
    where = home / key
    python = where / "bin" / "python"
    if not (where / "installed").exists():
        venv.create(where, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", str(ROOT)], check=True, timeout=900)
        (where / "installed").write_text("base install of cadml, no extras\n")
    return python


def _cadml(python: Path, tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp),
           "CADML_HOME": str(tmp / "home"), "KUBECONFIG": str(tmp / "none")}
    return subprocess.run([str(python), "-m", "controller", *argv], check=False,
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=300)


def test_the_base_install_has_no_heavy_library(base_python: Path) -> None:
    probe = ("import importlib.util as u; print([m for m in ('faiss', 'ezdxf', 'aiohttp', "
             "'numpy', 'kopf', 'kubernetes', 'psycopg', 'cryptography') if u.find_spec(m)])")
    done = subprocess.run([str(base_python), "-c", probe], check=True, capture_output=True,
                          text=True)
    assert done.stdout.strip() == "[]"


def test_a_pull_request_check_runs_on_the_base_install(base_python: Path,
                                                       tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "gitops"
    shutil.copytree(EXAMPLES / "tenants", repo / "tenants")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    validate = _cadml(base_python, tmp_path, "validate", str(EXAMPLES))
    assert validate.returncode == 0 and validate.stdout.startswith("valid: "), validate.stderr
    diff = _cadml(base_python, tmp_path, "diff", "--base", "HEAD", "--repo", str(repo))
    assert diff.returncode == 0, diff.stderr
    reconcile = _cadml(base_python, tmp_path, "reconcile", "--repo", str(repo))
    assert reconcile.returncode == 0 and "reconciled" in reconcile.stdout, reconcile.stderr
    status = _cadml(base_python, tmp_path, "status")
    assert status.returncode == 0 and "RolloutPolicy" in status.stdout, status.stderr


@pytest.mark.parametrize(("argv", "extra"), [
    (["worker", "--model", "acme-cad/part-similarity"], "worker"),
    (["index", "build", str(EXAMPLES), "--out", "out"], "worker"),
    (["run"], "operator"),
    (["status", "--store", "postgresql://nobody@127.0.0.1:1/x"], "postgres"),
])
def test_a_command_without_its_extra_names_it(base_python: Path, tmp_path: Path,
                                              argv: list[str], extra: str) -> None:
    done = _cadml(base_python, tmp_path, *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"pip install 'cadml[{extra}]'" in done.stderr.splitlines()[-1]

