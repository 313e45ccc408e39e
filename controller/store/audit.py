"""The audit trail's hash chain: how a row's hash is computed and how a chain is verified.

Purely computational. Each row's hash covers its content and the previous row's
hash (per tenant), so altering or removing any row breaks every later link; the
per-tenant head (last seq and hash) catches rows removed from the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

GENESIS = "0" * 64


class AuditAppend(NamedTuple):
    """One event to append: what happened to which object; `actor` None means the
    transaction's actor."""
    action: str
    object_kind: str
    object_name: str
    details: dict[str, Any] | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    tenant: str
    seq: int
    at: str
    actor: str
    action: str
    object_kind: str
    object_name: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def chain_hash(prev_hash: str, tenant: str, seq: int, at: str, actor: str, action: str,
               object_kind: str, object_name: str, details: dict[str, Any]) -> str:
    body = canonical([tenant, seq, at, actor, action, object_kind, object_name, details])
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def expected_hash(e: AuditEvent) -> str:
    return chain_hash(e.prev_hash, e.tenant, e.seq, e.at, e.actor, e.action, e.object_kind,
                      e.object_name, e.details)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    tenant: str
    seq: int
    problem: str

    def render(self) -> str:
        return f"tenant {self.tenant}: audit row seq {self.seq}: {self.problem}"


def verify_chain(
    tenant: str, events: Iterable[AuditEvent], head: tuple[int, str] | None
) -> ChainProblem | None:
    """The first broken link of one tenant's chain (events in seq order), or None."""
    prev_hash, expected_seq = GENESIS, 1
    for e in events:
        if e.seq != expected_seq:
            return ChainProblem(tenant, expected_seq,
                                f"missing: the chain jumps from seq {expected_seq - 1} to "
                                f"{e.seq} (row removed)")
        if e.prev_hash != prev_hash:
            return ChainProblem(tenant, e.seq, "its link to the previous row is broken "
                                               "(previous row altered or replaced)")
        if expected_hash(e) != e.hash:
            return ChainProblem(tenant, e.seq, f"content altered ({e.action} {e.object_kind} "
                                               f"{e.object_name} no longer matches its hash)")
        prev_hash, expected_seq = e.hash, e.seq + 1
    last = expected_seq - 1
    if head is not None and (head[0] != last or head[1] != prev_hash):
        if head[0] > last:
            return ChainProblem(tenant, last + 1, f"missing: the head records seq {head[0]} "
                                                  f"but the chain ends at {last} (rows removed)")
        return ChainProblem(tenant, last, "the chain head does not match the last row")
    if head is None and last > 0:
        return ChainProblem(tenant, last, "the chain head is missing")
    return None
