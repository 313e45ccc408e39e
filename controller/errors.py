"""The exception tree of cadml, and what each error means for retries.

    CadmlError                      base; never raised itself
    ├── UsageError                  bad command-line use; exit code 2
    ├── SourceError                 a file, folder or Git ref cannot be read; exit code 2
    ├── InvalidInput                input read fine but breaks rules; carries FieldErrors; exit 1
    ├── PruneRefused                a pass would delete a tenant (or most of it) unasked; exit 1
    ├── StoreError                  the runtime store refused or failed
    │   ├── ConflictError           a unique rule lost a race (second STABLE, repeated tick)
    │   ├── NotFound                the row asked for does not exist
    │   ├── StaleWrite              a pass built from an older view than the store's; requeue
    │   ├── StoreUnavailable        connection or server failure; a retry can help
    │   └── StoreMissing            no store, or not at this cadml's schema revision; exit 2
    └── StructuredError             carries code/stage/context: the JSON error envelope
        │   (below: defined beside the code that raises them)
        ├── InvalidDrawing          controller.features: a DXF upload we cannot read (4xx)
        ├── UnsafeArtifact          controller.search.pickle_scan: a pickle refused before loading
        ├── FetchError              controller.search.fetch: a download that failed
        ├── ArtifactError           controller.search.artifacts: missing, corrupt, bad checksum
        ├── ShardError              controller.search.shards: shards that cannot be merged
        ├── ShardFailed             controller.search.shardwait: a shard failed for good
        └── WorkerError             controller.worker.runtime: a request the worker cannot serve

Each class knows the condition reason it maps to and whether retrying can help,
so the operator turns it into `kopf.PermanentError` or `kopf.TemporaryError`
without guessing. Validators never raise: they return lists of
`controller.findings.FieldError`; `InvalidInput` only carries such a list
across a boundary that must stop (the CLI, a store transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from controller.findings import FieldError


class CadmlError(Exception):
    """Base of every error cadml raises on purpose."""

    reason: ClassVar[str] = "InternalError"
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 2


class UsageError(CadmlError):
    reason = "UsageError"


class SourceError(CadmlError):
    """A path, stream or Git ref could not be read (missing, unreadable, not a repo)."""

    reason = "SourceUnavailable"


class InvalidInput(CadmlError):
    """Input that was read but breaks one or more rules."""

    reason = "InvalidSpec"
    exit_code = 1

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        first = self.errors[0].render() if self.errors else "invalid input"
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(first + more)


class PruneRefused(CadmlError):
    """A pass would delete a whole tenant, or more than half of its live objects, and
    pruning was not asked for (`cadml reconcile --prune`). Nothing of the tenant is
    applied; `deleting` lists (kind, name) of what the pass would have deleted."""

    reason = "PruneRefused"
    exit_code = 1

    def __init__(self, tenant: str, deleting: Sequence[tuple[str, str]], live: int) -> None:
        self.tenant, self.deleting, self.live = tenant, list(deleting), live
        what = ("removes every live object of the tenant" if len(self.deleting) >= live
                else f"deletes {len(self.deleting)} of its {live} live objects")
        super().__init__(f"tenant {tenant}: this commit {what}; nothing applied in "
                         f"{tenant} (pass --prune if that is intended)")


class StoreError(CadmlError):
    reason = "StoreError"


class ConflictError(StoreError):
    """A uniqueness rule lost a race; retrying the same write cannot succeed."""

    reason = "Conflict"
    exit_code = 1


class NotFound(StoreError):
    reason = "NotFound"
    exit_code = 1


class StoreUnavailable(StoreError):
    reason = "StoreUnavailable"
    retryable = True


class StoreMissing(StoreError):
    """The store does not exist, or is not at the schema revision this cadml needs; the
    message says which command creates or upgrades it. Retrying does not help."""

    reason = "StoreMissing"


class StaleWrite(StoreError):
    """A write from an older view than the store holds: a row's `generation` is newer than
    the pass's, or a snapshot would be published from an older policy generation. The
    whole pass is refused (nothing written); a new pass from the latest view converges."""

    reason = "StalePass"
    retryable = True
    exit_code = 1


class StructuredError(CadmlError):
    """An error the worker reports as JSON: a stable `code` (what went wrong), the `stage`
    it happened in (upload, parse, artifact, …) and `context` (the values that explain it).
    `as_json()` is the envelope of DESIGN §5 less its timestamp, which the sender adds."""

    def __init__(self, message: str, *, code: str, stage: str,
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.stage = code, stage
        self.context: dict[str, Any] = context or {}

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "stage": self.stage, "message": str(self),
                "context": self.context}
