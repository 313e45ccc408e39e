"""End-to-end fixtures: a real kube-apiserver + etcd (+ controller-manager) and the operator
running for real as `cadml run` in a subprocess. Skipped locally without the binaries;
in CI (CI=true) their absence fails the run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.controlplane import ControlPlane, find_binaries, free_port
from tests.worker.conftest import corpus_index  # noqa: F401  - real index artifacts


def _require_binaries() -> Path:
    found = find_binaries()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the end-to-end tests: CADML_CONTROLPLANE_BIN is not set "
                        "(tests/controlplane/build.sh builds the control plane)")
        pytest.skip("no control plane binaries (export CADML_CONTROLPLANE_BIN=$("
                    "tests/controlplane/build.sh | tail -1))")
    return found


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(_require_binaries(), tmp_path_factory.mktemp("controlplane"))
    try:
        cp.start()
        install_crds(cp)
        yield cp
    finally:
        cp.stop()


def install_crds(cp: ControlPlane) -> None:
    """cadml's CRDs and kopf's peering CRDs, established, and the `cadml` peering object."""
    cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cp.kubectl("apply", "--server-side", "-f",
               str(ROOT / "charts" / "cadml" / "crds" / "kopf-peering.yaml"))
    for crd in ("models", "modelversions", "rolloutpolicies", "releaserecords"):
        cp.kubectl("wait", "--for=condition=Established", f"crd/{crd}.cadml.io",
                   "--timeout=60s")
    cp.kubectl("wait", "--for=condition=Established",
               "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    cp.kubectl("apply", "-f", "-", stdin="apiVersion: kopf.dev/v1\n"
               "kind: ClusterKopfPeering\nmetadata: {name: cadml}\n")


RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's own identity from the install manifests (generated from the chart):
    its ServiceAccount and least-privilege RBAC applied for real, and a token for it. The
    end-to-end operator runs as that account, so a missing permission fails the suite."""
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install" / "cadml.yaml")
                                          .read_text()) if d and d.get("kind") in RBAC_KINDS]
    control_plane.kubectl("create", "namespace", "cadml-system", check=False)
    control_plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    token = control_plane.kubectl("create", "token", "cadml-operator", "-n", "cadml-system",
                                  "--duration=6h").stdout.strip()
    return control_plane.token_kubeconfig(
        token, tmp_path_factory.mktemp("operator-identity") / "kubeconfig")


class Operator:
    """`cadml run` as a subprocess, its webhook on loopback. Its store is PostgreSQL as in
    production (a fresh database, the operator connected as the runtime role under
    row-level security) when a server is configured — always in CI — else a SQLite file.
    `admin_url` reads the store around the application (tests inspect rows with it)."""

    def __init__(self, cp: ControlPlane, workdir: Path, priority: int | None = None,
                 store_url: str | None = None, admin_url: str | None = None,
                 kubeconfig: Path | None = None, service: str | None = None,
                 timer_interval: float = 5, env: dict[str, str] | None = None) -> None:
        self.cp = cp
        self.timer_interval = timer_interval
        self.env = dict(env or {})  # more settings (e.g. a shared serving certificate)
        self.kubeconfig = kubeconfig
        self.service = service  # NAMESPACE/NAME: the API server calls the webhooks there
        self.priority = priority
        self.workdir = workdir
        self.store_url = store_url or f"sqlite:///{workdir / 'store.db'}"
        self.admin_url = admin_url or self.store_url
        self.webhook_port = free_port()
        self.metrics_port = free_port()  # the operator's Prometheus /metrics
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def start(self) -> None:
        env = {**self.cp.env(), "CADML_STORE_URL": self.store_url,
               **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
               "CADML_WEBHOOK_HOST": "127.0.0.1", "CADML_WEBHOOK_PORT": str(self.webhook_port),
               **({"CADML_WEBHOOK_SERVICE": f"{self.service}:443",
                   "CADML_WEBHOOK_HOST": "{1}.{0}.svc".format(*self.service.split("/"))}
                  if self.service else {}),
               "CADML_TIMER_INTERVAL": str(self.timer_interval), "PYTHONUNBUFFERED": "1",
               **self.env}
        if self.priority is not None:
            env["CADML_PRIORITY"] = str(self.priority)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--peering", "cadml", "--liveness",
                 f"http://127.0.0.1:{free_port()}/healthz", "--metrics-port",
                 str(self.metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the managed webhook configuration appears
            if self.priority is not None:
                return  # a standby replica may not touch the webhook configuration
            out = self.cp.kubectl("get", "validatingwebhookconfigurations,"
                                  "mutatingwebhookconfigurations", "-o", "name",
                                  check=False).stdout
            # persistent webhooks outlive an earlier operator: also wait for this one to serve
            if out.count("/admission.cadml.io") == 2 and self.serving():
                return
            if self.proc.poll() is not None:
                raise RuntimeError("operator exited:\n" + self.tail())
            time.sleep(0.5)
        raise RuntimeError("operator did not register its webhook:\n" + self.tail())

    def serving(self) -> bool:
        """Whether this operator's webhook server accepts connections."""
        try:
            with socket.create_connection(("127.0.0.1", self.webhook_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the store, read as its owner (no tenant scope needed)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url)
        try:
            with engine.connect() as c:
                return [tuple(r) for r in c.execute(text(sql))]
        finally:
            engine.dispose()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the operator's samples of `name` whose labels include `labels`."""
        import re
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            found = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
            if found and all(f'{k}="{v}"' in (found.group(1) or "")
                             for k, v in labels.items()):
                total += float(found.group(2))
        return total

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest, operator_kubeconfig: Path) -> Iterator[Operator]:
    from sqlalchemy.engine import make_url

    from tests.stores import APP_ROLE, PG_URL, drop_pg_database, new_pg_database

    database = None
    urls: dict[str, str] = {}
    if PG_URL:
        database = new_pg_database(request.getfixturevalue("pg_template"))
        base = make_url(PG_URL).set(database=database)
        urls = {"store_url": base.set(username=APP_ROLE, password=None)
                .render_as_string(False), "admin_url": base.render_as_string(False)}
    from controller.operator.certs import self_signed

    # in-cluster wiring: the API server calls the webhooks through the operator's Service,
    # with a mounted serving certificate (cert-manager's) that more replicas can share;
    # a module sets TIMER_INTERVAL to show what happens without the repair timer
    cert, key = self_signed(["cadml-operator.cadml-system.svc"],
                            tmp_path_factory.mktemp("webhook-tls"))
    op = Operator(control_plane, tmp_path_factory.mktemp("operator"),
                  store_url=urls.get("store_url"), admin_url=urls.get("admin_url"),
                  kubeconfig=operator_kubeconfig, service="cadml-system/cadml-operator",
                  timer_interval=getattr(request.module, "TIMER_INTERVAL", 5),
                  env={"CADML_WEBHOOK_CERT": str(cert), "CADML_WEBHOOK_KEY": str(key)})
    control_plane.route_service("cadml-system", "cadml-operator", 443, op.webhook_port)
    control_plane.clear_admission()  # "registered" must mean: by this operator
    op.start()
    yield op
    op.stop()
    if database:
        drop_pg_database(database)


def get(cp: ControlPlane, kind: str, ns: str, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", kind, "-n", ns, name, "-o", "json").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float = 60.0, every: float = 0.5,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (RuntimeError, KeyError, StopIteration, ValueError, OSError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def part_similarity_docs(namespace: str) -> list[dict[str, Any]]:
    """The example part-similarity model, its versions and policy (no release records), in
    `namespace`: the fixture the canary steps and shadow tests edit."""
    import yaml

    from tests.conftest import EXAMPLES

    docs = [d for d in yaml.safe_load_all(
        (EXAMPLES / "tenants" / "acme-cad" / "part-similarity.yaml").read_text())
        if d and d["kind"] != "ReleaseRecord"]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return docs
