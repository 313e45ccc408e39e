"""Every command's documented failure modes, as a user meets them: `cadml …` run as a
process. Each ends with one line on stderr naming the input and what to do, the documented
exit code, no traceback, and nothing created where the command only reads."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, INVALID, ROOT, git


@dataclass(frozen=True)
class World:
    tmp: Path
    store: str  # a store holding the reconciled examples
    repo: Path  # a Git repository of the examples

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, store=self.store, repo=self.repo)


def cadml(world: World, argv: list[str], env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CADML_", "KUBE"))}
    base.update(PYTHONPATH=str(ROOT), CADML_HOME=str(world.tmp / "home"),
                KUBECONFIG=str(world.tmp / "no-kubeconfig"))
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "controller", *argv], check=False,
                          capture_output=True, text=True, env=base, timeout=timeout,
                          cwd=world.tmp)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("failures")
    repo = tmp / "gitops"
    shutil.copytree(EXAMPLES / "tenants", repo / "tenants")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    w = World(tmp, f"sqlite:///{tmp / 'store.db'}", repo)
    done = cadml(w, ["reconcile", "--repo", str(repo), "--store", w.store])
    assert done.returncode == 0, done.stderr
    (tmp / "a-file").write_text("x")
    yield w


def _nothing_at(rel: str) -> Callable[[World], bool]:
    return lambda w: not (w.tmp / rel).exists()


@dataclass(frozen=True)
class Case:
    argv: list[str]
    code: int
    says: str  # in the one stderr line
    env: dict[str, str] = field(default_factory=dict)
    after: Callable[[World], bool] = lambda w: True


MISSING = "sqlite:///{tmp}/nowhere/x.db"
NO_GIT_IDENTITY = {"HOME": "{tmp}/home", "GIT_CONFIG_GLOBAL": "{tmp}/no-gitconfig",
                   "GIT_CONFIG_NOSYSTEM": "1"}

CASES: dict[str, Case] = {
    # store URLs
    "postgres unreachable": Case(["status", "--store", "postgresql://nobody@127.0.0.1:1/x"],
                                 2, "cannot open store postgresql://nobody@127.0.0.1:1/x"),
    "postgres:// alias": Case(["status", "--store", "postgres://nobody@127.0.0.1:1/x"],
                              2, "cannot open store postgresql://"),
    "unknown scheme": Case(["status", "--store", "foo://bar"], 2, "'foo' is not supported"),
    "not a URL": Case(["status", "--store", "notaurl"], 2, "'notaurl' is not a URL"),
    "mysql": Case(["history", "--at", "now", "--store", "mysql://u@h/db"], 2,
                  "'mysql' is not supported"),
    # read-only commands never create a store
    "status, no store": Case(["status", "--store", MISSING], 2, "cadml db upgrade",
                             after=_nothing_at("nowhere")),
    "status, no embedded store": Case(["status"], 2, "no store at", after=_nothing_at("home")),
    "history, no store": Case(["history", "--at", "-2h", "--store", MISSING], 2,
                              "no store at", after=_nothing_at("nowhere")),
    "audit verify, no store": Case(["audit", "verify", "--store", MISSING], 2, "no store at",
                                   after=_nothing_at("nowhere")),
    "evaluate --dry-run, no store": Case(["evaluate", "--dry-run", "--store", MISSING], 2,
                                         "no store at", after=_nothing_at("nowhere")),
    "compare, no store": Case(["compare", "a/b", "--versions", "1,2", "--store", MISSING], 2,
                              "no store at", after=_nothing_at("nowhere")),
    "db current, no store": Case(["db", "current", "--store", MISSING], 2, "no store at",
                                 after=_nothing_at("nowhere")),
    # times and names
    "history --at garbage": Case(["history", "--at", "yesterday", "--store", "{store}"], 2,
                                 "--at 'yesterday': not a time"),
    "bad --window": Case(["schedule-tick", "--window-key", "k", "--window", "5x",
                          "--store", "{store}"], 2, "--window '5x'"),
    "evaluate --model typo": Case(["evaluate", "--model", "assembly-mtach", "--store",
                                   "{store}", "--dry-run"], 2, "--model assembly-mtach"),
    "evaluate --tenant typo": Case(["evaluate", "--tenant", "acme", "--store", "{store}"], 2,
                                   "--tenant acme: not in the store"),
    "compare unknown model": Case(["compare", "acme-cad/nope", "--versions", "1.0.0,1.1.0",
                                   "--store", "{store}"], 2, "model acme-cad/nope: not in"),
    # index build checks its output before reading any drawing
    "index --out is a file": Case(["index", "build", str(EXAMPLES), "--out", "{tmp}/a-file"],
                                  2, "--out {tmp}/a-file: is a file"),
    "index --out unwritable": Case(["index", "build", str(EXAMPLES), "--out",
                                    "/proc/cadml-test/out"], 2, "cannot write there"),
    "index --workers 0": Case(["index", "build", str(EXAMPLES), "--out", "{tmp}/o",
                               "--workers", "0"], 2, "--workers: 0 must be at least 1"),
    "index no source": Case(["index", "build", "{tmp}/none", "--out", "{tmp}/o"], 2,
                            "no such folder"),
    # worker
    "worker unknown model": Case(["worker", "--model", "acme-cad/nope", "--store", "{store}"],
                                 2, "--model acme-cad/nope: no such model"),
    "worker bad --model": Case(["worker", "--model", "nope", "--store", "{store}"], 2,
                               "use TENANT/MODEL"),
    "worker, no store": Case(["worker", "--model", "a/b", "--store", MISSING], 2,
                             "no store at", after=_nothing_at("nowhere")),
    # cluster
    "rollback --cluster without --to": Case(["rollback", "acme-cad/part-similarity",
                                             "--reason", "x", "--cluster"], 2,
                                            "--cluster needs --to"),
    "rollback --cluster, no kubeconfig": Case(["rollback", "acme-cad/part-similarity", "--to",
                                               "1.0.0", "--reason", "x", "--cluster"], 2,
                                              "no Kubernetes cluster configured"),
    "run, no cluster": Case(["run", "--store", "{store}"], 2,
                            "no Kubernetes cluster configured"),
    # Git
    "promote, no Git identity": Case(["promote", "acme-cad/part-similarity", "--version",
                                      "1.2.0", "--reason", "x", "--repo", "{repo}"], 2,
                                     "Git has no identity", env=NO_GIT_IDENTITY),
    "rollback --author malformed": Case(["rollback", "acme-cad/part-similarity", "--reason",
                                         "x", "--repo", "{repo}", "--author", "ann"], 2,
                                        "use 'Name <email>'"),
    "diff unknown ref": Case(["diff", "--base", "no-such-ref", "--repo", "{repo}"], 2,
                             "no-such-ref"),
    "reconcile not a repo": Case(["reconcile", "--repo", "{tmp}/none", "--store", "{store}"],
                                 2, "{tmp}/none"),
    "validate missing path": Case(["validate", "{tmp}/none.yaml"], 2, "none.yaml"),
    "gen --check outside a checkout": Case(["gen", "--check"], 2, "not inside a cadml checkout"),
}


def _check(world: World, case: Case, done: subprocess.CompletedProcess[str]) -> None:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == case.code, done.stderr
    assert lines and lines[-1].startswith("cadml "), done.stderr
    assert world.fill(case.says) in lines[-1], done.stderr
    assert case.after(world)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_failure_is_one_line_and_an_exit_code(world: World, name: str) -> None:
    case = CASES[name]
    env = {k: world.fill(v) for k, v in case.env.items()}
    _check(world, case, cadml(world, [world.fill(a) for a in case.argv], env))


def test_worker_on_a_port_in_use(world: World) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = cadml(world, ["worker", "--model", "acme-cad/part-similarity", "--store",
                             world.store, "--host", "127.0.0.1", "--port", str(port)])
    _check(world, Case([], 2, f"cannot listen on 127.0.0.1:{port}: the port is in use"), done)


def test_debug_shows_the_traceback(world: World) -> None:
    done = cadml(world, ["status", "--store", "foo://bar", "--debug"])
    assert done.returncode == 2 and "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("cadml status: store URL foo://bar")


def test_output_closed_by_its_reader_ends_quietly(world: World) -> None:
    """`cadml validate … | head`: more output than a pipe holds, the reader leaves early."""
    for copy in "abc":
        shutil.copytree(INVALID, world.tmp / "many" / copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADML_")}
    proc = subprocess.Popen([sys.executable, "-m", "controller", "validate",
                             str(world.tmp / "many"), "-o", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""
