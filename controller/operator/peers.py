"""Who this replica is to kopf's peering, and which peer records outlived their pods.

kopf pauses a replica while a live peer of a higher (or equal) priority is recorded in
the peering object; a record lives for its `lifetime` (60 s) after its last keep-alive.
A replica that is SIGKILLed cannot remove its record, and every replica draws its
priority at start, so without more the replica that replaces it waits up to a minute.
Two things end that wait (decisions here, pure; the API calls in `kube`):

- a replica running in a pod takes the pod as its identity (`pod/NAMESPACE/NAME`): a
  container restarted in the same pod finds its own record, which never pauses it;
- at start, the records of pods that no longer exist are removed (`gone_peers`): the
  replica a new pod replaced is gone for good;
- while paused, a standby removes the records of the peers that pause it whose pod is gone
  (`gone_blockers`, every few seconds: `standby.PeeringWatch`), so it takes over from a
  SIGKILLed active replica within seconds of its pod's deletion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

POD_PREFIX = "pod/"


def pod_identity(namespace: str | None, name: str | None) -> str | None:
    """The peering identity of a replica in pod NAMESPACE/NAME (the downward API's
    POD_NAMESPACE and POD_NAME), or None outside a pod (kopf then makes one up)."""
    return f"{POD_PREFIX}{namespace}/{name}" if namespace and name else None


def pod_of(identity: str) -> tuple[str, str] | None:
    """(namespace, name) of a pod identity; None for any other (a developer's laptop)."""
    if not identity.startswith(POD_PREFIX):
        return None
    parts = identity[len(POD_PREFIX):].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


def gone_peers(status: Mapping[str, Any] | None, identity: str,
               pod_exists: Callable[[str, str], bool | None]) -> list[str]:
    """The recorded peers, other than this replica, whose pod no longer exists.
    `pod_exists` answers True, False, or None when it cannot tell (then the record
    stays: kopf lets it expire)."""
    out = []
    for other in sorted(status or {}):
        pod = pod_of(other)
        if other != identity and pod is not None and pod_exists(*pod) is False:
            out.append(other)
    return out


def blocking_peers(status: Mapping[str, Any] | None, identity: str, priority: int,
                   now: datetime) -> list[str]:
    """The peers, judged from the peering object's status (identity → {priority,
    lifetime, lastseen}), for which kopf pauses this replica: the other live peers of a
    higher or equal priority. A peer is live until lastseen + lifetime."""
    from kopf._core.engines.peering import Peer

    out = []
    for other, info in sorted((status or {}).items()):
        if other == identity or not isinstance(info, Mapping):
            continue
        peer = Peer(identity=other, **{k: v for k, v in info.items()  # type: ignore[arg-type]
                                       if k in ("priority", "lifetime", "lastseen")})
        if peer.deadline > now and peer.priority >= priority:
            out.append(other)
    return out


def peers_allow(status: Mapping[str, Any] | None, identity: str, priority: int,
                now: datetime) -> bool:
    """Whether kopf lets this replica operate: no peer blocks it (`blocking_peers`)."""
    return not blocking_peers(status, identity, priority, now)


def gone_blockers(status: Mapping[str, Any] | None, identity: str, priority: int,
                  now: datetime, pod_exists: Callable[[str, str], bool | None]) -> list[str]:
    """The peers that pause this replica although their pod no longer exists (a SIGKILLed
    active replica whose pod was deleted): removing their records resumes it at once.
    Only the blocking peers' pods are asked about, so an operating replica asks nothing."""
    blocking = blocking_peers(status, identity, priority, now)
    return gone_peers({p: (status or {})[p] for p in blocking}, identity, pod_exists)
