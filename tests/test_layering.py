"""Decisions are pure: the planner, validators and evaluation import no adapter library."""

from __future__ import annotations

import subprocess
import sys

import pytest

ADAPTER_LIBS = ("sqlalchemy", "kopf", "faiss", "ezdxf", "aiohttp", "kubernetes", "psycopg")


@pytest.mark.parametrize("module", [
    "controller.reconcile.planner",
    "controller.reconcile.conditions",
    "controller.validation",
    "controller.diff",
    "controller.routing",
    "controller.evaluation",
    "controller.records",
    "controller.steps",
    "controller.shadow",
])
def test_pure_module_imports_no_adapter(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {ADAPTER_LIBS!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"
