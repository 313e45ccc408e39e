"""The runtime store: tables, migrations and the repository the rest of cadml talks to."""

from controller.store.repository import (
    ModelRow,
    ObservedTenant,
    PolicyRow,
    PolicySnapshot,
    ReleaseRow,
    RouteRow,
    RunRecord,
    Store,
    StoreTx,
    VersionRow,
    WorkerState,
)

__all__ = [
    "ModelRow",
    "ObservedTenant",
    "PolicyRow",
    "PolicySnapshot",
    "ReleaseRow",
    "RouteRow",
    "RunRecord",
    "Store",
    "StoreTx",
    "VersionRow",
    "WorkerState",
]
