"""The runtime store: tables, migrations and the repository the rest of cadml talks to."""

from controller.store.repository import Store, StoreTx

__all__ = ["Store", "StoreTx"]
