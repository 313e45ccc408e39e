"""Opening the store the way commands need it: the embedded SQLite default migrates itself on
first use; any other store must already be at the head revision (`cadml db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from controller.errors import StoreUnavailable
from controller.store.engine import make_engine, resolve_url
from controller.store.migrate import current_revision, head_revision, upgrade
from controller.store.repository import Store


def open_store(cli_url: str | None, *, auto_migrate_sqlite: bool = True) -> Store:
    url = resolve_url(cli_url)
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    except Exception as exc:
        raise StoreUnavailable(f"cannot open store {make_url(url).render_as_string()}: "
                               f"{exc}") from exc
    head = head_revision()
    if current != head:
        if engine.dialect.name == "sqlite" and auto_migrate_sqlite:
            upgrade(engine)
        else:
            raise StoreUnavailable(f"store is at revision {current or 'none'}, this cadml needs "
                                   f"{head}: run `cadml db upgrade --store URL`")
    return Store(engine)


def open_existing_store(cli_url: str | None) -> Store:
    """A store for read-only commands (`cadml runs`, `cadml audit log`): it must exist at
    the head revision; nothing is created or migrated, a missing store is an error."""
    url = resolve_url(cli_url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(str(parsed.database)).is_file():
        raise StoreUnavailable(f"no store at {parsed.database}: nothing was reconciled there "
                               "yet (give --store URL, or run `cadml reconcile` first)")
    return open_store(cli_url, auto_migrate_sqlite=False)
