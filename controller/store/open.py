"""Opening the store the way commands need it: the embedded SQLite default migrates itself on
first use by a command that writes (`create=True`); a command that only reads, or any
other store, needs it to exist at the head revision already (`cadml db upgrade`)."""

from __future__ import annotations

from controller.errors import StoreMissing, StoreUnavailable
from controller.store.engine import make_engine, parse_store_url, resolve_url, sqlite_file
from controller.store.migrate import current_revision, head_revision, upgrade
from controller.store.repository import Store

HOW_TO_CREATE = ("create it with `cadml reconcile --repo PATH --store URL` or "
                 "`cadml db upgrade --store URL`")


def open_store(cli_url: str | None, *, auto_migrate_sqlite: bool = True,
               create: bool = True) -> Store:
    """The store at --store / CADML_STORE_URL / the embedded default. With `create` false
    (read-only commands, workers) nothing is created or migrated: a missing or outdated
    store is a `StoreMissing` error saying how to make it."""
    url = resolve_url(cli_url)
    shown = parse_store_url(url).render_as_string(hide_password=True)
    path = sqlite_file(url)
    if not create and path is not None and not path.is_file():
        raise StoreMissing(f"no store at {shown}: {HOW_TO_CREATE}")
    engine = make_engine(url, create_dirs=create)
    try:
        current = current_revision(engine)
    except Exception as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise StoreUnavailable(f"cannot open store {shown}: {first.strip()}") from exc
    head = head_revision()
    if current != head:
        if engine.dialect.name == "sqlite" and auto_migrate_sqlite and create:
            upgrade(engine)
        elif current is None:
            raise StoreMissing(f"store {shown} has no cadml schema: {HOW_TO_CREATE}")
        else:
            raise StoreMissing(f"store {shown} is at revision {current}, this cadml needs "
                               f"{head}: run `cadml db upgrade --store URL`")
    return Store(engine)
