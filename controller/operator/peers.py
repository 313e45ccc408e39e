"""Who this replica is to kopf's peering, and which peer records outlived their replicas.

kopf pauses a replica while a live peer of a higher (or equal) priority is recorded in
the peering object; a record lives for its `lifetime` (60 s) after its last keep-alive.
A replica that is SIGKILLed cannot remove its record, and every replica draws its
priority at start, so without more the replica that replaces it waits up to a minute.
Two things end that wait (decisions here, pure; the API calls in `kube`):

- a replica running in a pod takes the pod as its identity (`pod/NAMESPACE/NAME/UID`):
  a container restarted in the same pod finds its own record, which never pauses it,
  and a pod recreated under the same name (a StatefulSet's) is a new replica;
- a record is removed only when both hold (`removable`): its pod is gone (no pod of that
  name, or one of another UID) and the record is stale (not refreshed for
  `FRESH_SECONDS`; the operating replica refreshes its record every `HEARTBEAT_SECONDS`
  while another peer is recorded: `standby.PeeringWatch`). A replica whose Pod object
  was deleted while its process runs on (a node cut off from the kubelet's view) keeps
  refreshing, so its record is never removed and two replicas never operate at once.

At start, the removable records are removed (`gone_peers`); while paused, a standby
removes the removable records of the peers that pause it (`gone_blockers`, every few
seconds), so it takes over from a SIGKILLed active replica within `FRESH_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

POD_PREFIX = "pod/"
GONE = ""  # a pod lookup's answer for a pod that does not exist
HEARTBEAT_SECONDS = 5.0  # how often the operating replica refreshes its record
FRESH_SECONDS = 3 * HEARTBEAT_SECONDS  # a record refreshed this recently: a running replica

# (namespace, name) → the pod's UID, GONE when it does not exist, None: cannot tell
PodLookup = Callable[[str, str], str | None]


def pod_identity(namespace: str | None, name: str | None,
                 uid: str | None = None) -> str | None:
    """The peering identity of a replica in pod NAMESPACE/NAME with UID (the downward
    API's POD_NAMESPACE, POD_NAME and POD_UID), or None outside a pod (kopf then makes one
    up). Without a UID, the name alone (a pod recreated under it is then the same peer)."""
    if not (namespace and name):
        return None
    return f"{POD_PREFIX}{namespace}/{name}" + (f"/{uid}" if uid else "")


def pod_of(identity: str) -> tuple[str, str, str | None] | None:
    """(namespace, name, uid or None) of a pod identity; None for any other (a
    developer's laptop)."""
    if not identity.startswith(POD_PREFIX):
        return None
    parts = identity[len(POD_PREFIX):].split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def pod_gone(recorded_uid: str | None, answer: str | None) -> bool | None:
    """Whether the replica's pod is gone, from the lookup's `answer`: no pod of that name,
    or one of another UID than the identity records (a pod recreated under the same name).
    None: cannot tell."""
    if answer is None:
        return None
    return answer == GONE or (recorded_uid is not None and answer != recorded_uid)


def record_fresh(info: Mapping[str, Any], now: datetime) -> bool:
    """Whether a peer record was refreshed within `FRESH_SECONDS` (an unreadable time
    counts as fresh: nothing is removed on a guess)."""
    try:
        seen = datetime.fromisoformat(str(info["lastseen"]))
    except (KeyError, TypeError, ValueError):
        return True
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=now.tzinfo)
    return now - seen < timedelta(seconds=FRESH_SECONDS)


def removable(info: Mapping[str, Any], gone: bool | None, now: datetime) -> bool:
    """A record may be removed only when its pod is known to be gone and the record is
    stale: a record still being refreshed belongs to a running replica, whatever its pod
    says. Purely computational."""
    return gone is True and not record_fresh(info, now)


def gone_peers(status: Mapping[str, Any] | None, identity: str, now: datetime,
               pod_uid: PodLookup) -> list[str]:
    """The recorded peers, other than this replica, that may be removed (`removable`):
    pod gone and record stale. A record still fresh costs no lookup."""
    out = []
    for other, info in sorted((status or {}).items()):
        pod = pod_of(other)
        if other == identity or pod is None or not isinstance(info, Mapping) \
                or record_fresh(info, now):
            continue
        if removable(info, pod_gone(pod[2], pod_uid(pod[0], pod[1])), now):
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
                  now: datetime, pod_uid: PodLookup) -> list[str]:
    """The peers that pause this replica although they are gone (`removable`: a SIGKILLed
    active replica whose pod was deleted or recreated, its record no longer refreshed):
    removing their records resumes it at once. Only the blocking peers' pods are asked
    about, so an operating replica asks nothing."""
    blocking = blocking_peers(status, identity, priority, now)
    return gone_peers({p: (status or {})[p] for p in blocking}, identity, now, pod_uid)
