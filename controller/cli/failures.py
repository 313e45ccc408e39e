"""What the command line says when a command fails: one line on stderr and an exit code.

`explain` is a pure function from an exception to (message, exit code); `main` calls it
once for every command, so no command catches errors for the sake of printing them.
The traceback is for `--debug` (or CADML_DEBUG=1) only.
"""

from __future__ import annotations

EXIT_INTERNAL = 3  # an error cadml did not expect: a bug; --debug shows where
EXIT_PIPE = 141  # stdout was closed by the reader (`cadml … | head`), as a SIGPIPE death

# top-level module of a third-party package → the extra of cadml that installs it
EXTRAS = {
    "faiss": "worker", "ezdxf": "worker", "aiohttp": "worker", "numpy": "worker",
    "kopf": "operator", "kubernetes": "operator", "cryptography": "operator",
    "psycopg": "postgres", "psycopg2": "postgres",
}


def missing_extra(exc: BaseException) -> str | None:
    """The cadml extra whose package `exc` says is missing, if any."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return EXTRAS.get(exc.name.split(".")[0])
    return None


def first_line(text: str) -> str:
    """The first non-empty line of a message (library errors append hints and URLs)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def explain(exc: BaseException) -> tuple[str, int]:
    """One line saying what failed, on which input, and what to do; and the exit code."""
    from controller.errors import CadmlError

    if isinstance(exc, CadmlError):
        return first_line(str(exc)) or exc.reason, exc.exit_code
    if isinstance(exc, ModuleNotFoundError) and (extra := missing_extra(exc)):
        return (f"this command needs the '{extra}' extra ({exc.name} is not installed): "
                f"pip install 'cadml[{extra}]'"), 2
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}", 2
    kind = type(exc)
    if kind.__name__ == "ConfigException" and kind.__module__.startswith("kubernetes"):
        return (f"no Kubernetes cluster configured ({first_line(str(exc))}): set KUBECONFIG "
                "or ~/.kube/config, or run inside a cluster"), 2
    if kind.__module__.startswith("sqlalchemy"):
        return (f"store error: {first_line(str(exc))} (check --store / CADML_STORE_URL; "
                "`cadml db current` shows its revision)"), 2
    return (f"internal error: {kind.__name__}: {first_line(str(exc))} (a bug in cadml; "
            "rerun with --debug for the traceback and report it)"), EXIT_INTERNAL
