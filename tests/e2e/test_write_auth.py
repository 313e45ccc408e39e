"""Reviews and bindings against the real API server: a worker started with --kube-auth asks
it about each bearer token (TokenReview) and permission (SubjectAccessReview on
models/reviews and models/bindings). Users are ServiceAccounts with the chart's
cadml-edit or cadml-view role; the worker's own account has the chart's
cadml-worker-auth role, as in a namespace listed in workers.namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.e2e.controlplane import ControlPlane
from tests.worker.conftest import (  # noqa: F401  - the worker tests' fixtures
    MODEL,
    TENANT,
    World,
    corpus_hnsw,
    corpus_index,
    world,
)
from tests.worker.process import WorkerProcess, assert_writes_are_authenticated

pytestmark = pytest.mark.e2e


def _token(cp: ControlPlane, account: str) -> str:
    return str(cp.kubectl("create", "token", account, "-n", TENANT,
                          "--duration=1h").stdout.strip())


@pytest.fixture(scope="module")
def accounts(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, str]:
    """The chart's ClusterRoles applied for real; an editor, a viewer and the worker's own
    account in the tenant namespace. Returns a token per account, and the kubeconfig the
    worker checks tokens with."""
    roles = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install" / "cadml.yaml")
                                           .read_text())
             if d and d["kind"] == "ClusterRole"
             and d["metadata"]["name"] in ("cadml-edit", "cadml-view", "cadml-worker-auth")]
    assert len(roles) == 3
    cp = control_plane
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(roles))
    cp.kubectl("create", "namespace", TENANT, check=False)
    for account in ("editor", "viewer", "cadml-worker"):
        cp.kubectl("create", "serviceaccount", account, "-n", TENANT, check=False)
    for account, role in (("editor", "cadml-edit"), ("viewer", "cadml-view")):
        cp.kubectl("create", "rolebinding", f"{account}-{role}", "-n", TENANT,
                   f"--clusterrole={role}", f"--serviceaccount={TENANT}:{account}",
                   check=False)
    cp.kubectl("create", "clusterrolebinding", "cadml-worker-auth-e2e",
               "--clusterrole=cadml-worker-auth", f"--serviceaccount={TENANT}:cadml-worker",
               check=False)
    kubeconfig = cp.token_kubeconfig(_token(cp, "cadml-worker"),
                                     tmp_path_factory.mktemp("worker-identity") / "kubeconfig")
    return {"editor": _token(cp, "editor"), "viewer": _token(cp, "viewer"),
            "kubeconfig": str(kubeconfig)}


def test_kubernetes_tokens_decide_who_reviews_and_binds(
        world: World, accounts: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    worker = WorkerProcess(f"{TENANT}/{MODEL}", str(world.store.engine.url),
                           ["--kube-auth", "--kubeconfig", accounts["kubeconfig"]],
                           tmp_path / "worker.log")
    try:
        assert_writes_are_authenticated(world, worker, edit=accounts["editor"],
                                        view=accounts["viewer"],
                                        user=f"system:serviceaccount:{TENANT}:editor")
    finally:
        worker.stop()
