"""`explain`: the pure mapping from an exception to the one line and the exit code."""

from __future__ import annotations

import pytest

from controller.cli.failures import EXIT_INTERNAL, explain
from controller.errors import InvalidInput, StoreMissing, UsageError


def _module_missing(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.mark.parametrize(("exc", "line", "code"), [
    (UsageError("--model 'x': use TENANT/MODEL"), "--model 'x': use TENANT/MODEL", 2),
    (StoreMissing("no store at sqlite:///x.db: create it\n(more)"),
     "no store at sqlite:///x.db: create it", 2),
    (InvalidInput([]), "invalid input", 1),
    (_module_missing("faiss"), "needs the 'worker' extra (faiss is not installed): "
                               "pip install 'cadml[worker]'", 2),
    (_module_missing("kubernetes.config"), "pip install 'cadml[operator]'", 2),
    (_module_missing("psycopg"), "pip install 'cadml[postgres]'", 2),
    (FileNotFoundError(2, "No such file or directory", "/x/y"),
     "/x/y: no such file or directory", 2),
    (PermissionError(13, "Permission denied"), "permission denied", 2),
    (KeyError("boom"), "internal error: KeyError: 'boom' (a bug in cadml; rerun with --debug",
     EXIT_INTERNAL),
    (_module_missing("not_ours"), "internal error: ModuleNotFoundError", EXIT_INTERNAL),
])
def test_explain(exc: BaseException, line: str, code: int) -> None:
    message, exit_code = explain(exc)
    assert line in message and "\n" not in message and exit_code == code


def test_a_kubernetes_config_error_says_how_to_point_at_a_cluster() -> None:
    from kubernetes.config import ConfigException

    message, code = explain(ConfigException("Invalid kube-config file."))
    assert code == 2 and "set KUBECONFIG" in message
