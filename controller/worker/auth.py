"""Who may use a worker: a bearer token, checked by the Kubernetes API server
(TokenReview, then SubjectAccessReview) or by a token file. Writes (review a run, bind
or unbind a job) need `create` on `models/reviews|bindings` (cadml-edit); reads (search,
look-ups) need `get` on the Model (cadml-view) once a checker is configured.

The recorded reviewer is the identity the check returns, never a header. Without a
checker, writes are refused unless the worker runs `--insecure-local` on loopback, and
reads are open (embedded use). Positive answers are cached for `CACHE_SECONDS`, so a
search costs no API call while its caller's token and permission are known.
Decisions here are pure (`bearer`, `listen_problem`, `TokenFile.parse`); the API
server calls are blocking and run in an executor.

    401 unauthenticated   no token, or one nobody vouches for
    401 writes_disabled   no checker configured (see --auth-token-file, --kube-auth)
    403 forbidden         a known user without the permission (cadml-edit)
    503 auth_unavailable  the API server could not be asked
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from controller.errors import UsageError
from controller.worker.runtime import WorkerError

log = logging.getLogger("cadml.worker.auth")

GROUP = "cadml.io"
RESOURCE = "models"
# what each kind of write asks the authorizer for: `create` on a subresource of the Model
REVIEWS, BINDINGS = "reviews", "bindings"
READS = ""  # `get` on the Model itself
INSECURE_LOCAL_USER = "insecure-local"
ANONYMOUS_USER = "anonymous"
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000
USER_MAX = 256


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """`verb` on `models/<subresource>` named `model` in namespace `tenant`."""

    tenant: str
    model: str
    subresource: str
    verb: str = "create"


class Checker(Protocol):
    def authenticate(self, token: str) -> Identity | None: ...

    def allowed(self, who: Identity, action: Action) -> bool: ...


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header; None when absent or malformed."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_problem(host: str, insecure_local: bool) -> str | None:
    """Why the worker must not start with these options; None when it may."""
    if insecure_local and not is_loopback(host):
        return (f"--insecure-local accepts unauthenticated writes and needs a loopback "
                f"--host (127.0.0.1), not {host}")
    return None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """Tokens configured at start for embedded use. One line per token:
    `TOKEN USER [edit|view]` (access `edit` when left out; `#` starts a comment).
    `edit` may review and bind; `view` authenticates but may write nothing, as the
    chart's cadml-view role. Tokens are kept only as sha256 digests."""

    ACCESS = ("edit", "view")

    def __init__(self, users: dict[str, tuple[str, str]]) -> None:
        self._users = users  # digest → (user, access)

    @classmethod
    def parse(cls, text: str, source: str = "token file") -> TokenFile:
        users: dict[str, tuple[str, str]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) not in (2, 3) or (len(words) == 3 and words[2] not in cls.ACCESS):
                raise UsageError(f"{source} line {n}: expected 'TOKEN USER [edit|view]'")
            if len(words[1]) > USER_MAX:  # the store records the reviewer in 256 characters
                raise UsageError(f"{source} line {n}: a user name of at most {USER_MAX} "
                                 "characters")
            digest = _digest(words[0])
            if digest in users:
                raise UsageError(f"{source} line {n}: a token given twice")
            users[digest] = (words[1], words[2] if len(words) == 3 else "edit")
        if not users:
            raise UsageError(f"{source}: no tokens in it")
        return cls(users)

    @classmethod
    def read(cls, path: Path) -> TokenFile:
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"--auth-token-file {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))

    def authenticate(self, token: str) -> Identity | None:
        found = self._users.get(_digest(token))
        return None if found is None else Identity(found[0], (f"cadml-{found[1]}",))

    def allowed(self, who: Identity, action: Action) -> bool:
        if action.verb == "get":
            return bool({"cadml-edit", "cadml-view"} & set(who.groups))
        return "cadml-edit" in who.groups


class KubernetesReviews:
    """The API server decides: a TokenReview says whose token it is, a SubjectAccessReview
    whether that user may `create` `models/reviews` (or `models/bindings`) on the Model in
    its namespace. The worker's own account needs `create` on both review kinds (the
    chart's cadml-worker-auth ClusterRole)."""

    def __init__(self, authn: Any, authz: Any) -> None:
        self.authn, self.authz = authn, authz

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> KubernetesReviews:
        """The API client from `kubeconfig`, else the pod's service account, else
        $KUBECONFIG; a UsageError when none is there (the worker must not start unable to
        check anybody)."""
        from kubernetes import client, config

        try:
            if kubeconfig:
                api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            else:
                try:
                    cfg = client.Configuration()
                    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                    api = client.ApiClient(cfg)
                except config.ConfigException:
                    api = config.new_client_from_config()  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise UsageError(f"--kube-auth: no credentials to reach the API server ({exc}); "
                             "in a pod mount a service account token (the chart's "
                             "workers.namespaces), elsewhere give --kubeconfig") from None
        return cls(client.AuthenticationV1Api(api), client.AuthorizationV1Api(api))

    def authenticate(self, token: str) -> Identity | None:
        from kubernetes import client

        review = self.authn.create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token)))
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        return Identity(user.username or "", tuple(user.groups or ()), user.uid or "",
                        {k: list(v) for k, v in (user.extra or {}).items()})

    def allowed(self, who: Identity, action: Action) -> bool:
        from kubernetes import client

        review = self.authz.create_subject_access_review(client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=who.user, groups=list(who.groups), uid=who.uid or None,
                extra=who.extra or None,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=action.tenant, verb=action.verb, group=GROUP,
                    resource=RESOURCE, subresource=action.subresource or None,
                    name=action.model))))
        return bool(review.status and review.status.allowed)


def _refuse(status: int, code: str, message: str, **context: Any) -> WorkerError:
    return WorkerError(message, code=code, stage="auth", status=status, context=context)


@dataclass(frozen=True)
class WriteGuard:
    """What the worker checks before a request. `checker` None: reads are open and every
    write is refused unless `insecure_local`."""

    checker: Checker | None = None
    insecure_local: bool = False
    # (token digest, action) → (identity, expiry): positive answers only, bounded
    _known: dict[tuple[str, Action], tuple[Identity, float]] = field(
        default_factory=dict, compare=False, repr=False)

    def unchecked(self, reading: bool) -> Identity | None:
        """The identity of a request that needs no check (no checker: reads are anonymous,
        writes insecure-local where allowed); None: `identify` checks or refuses it."""
        if self.checker is None:
            if reading:
                return Identity(ANONYMOUS_USER)
            if self.insecure_local:
                return Identity(INSECURE_LOCAL_USER)
        return None

    async def identify(self, header: str | None, action: Action) -> Identity:
        reading = action.verb == "get"
        free = self.unchecked(reading)
        if free is not None:
            return free
        if self.checker is None:
            raise _refuse(401, "writes_disabled",
                          "this worker accepts no writes: start it with --auth-token-file, "
                          "--kube-auth (in a cluster), or --insecure-local on loopback")
        token = bearer(header)
        if token is None:
            role = "cadml-view (or cadml-edit)" if reading else "cadml-edit"
            raise _refuse(401, "unauthenticated",
                          f"send 'Authorization: Bearer TOKEN' (a Kubernetes token of a user "
                          f"with the {role} role, or one of the worker's token file)")
        key, now = (_digest(token), action), time.monotonic()
        known = self._known.get(key)
        if known is not None and known[1] > now:
            return known[0]
        who = await self._check(token, action)
        if len(self._known) >= CACHE_ENTRIES:
            self._known.clear()
        self._known[key] = (who, now + CACHE_SECONDS)
        return who

    async def _check(self, token: str, action: Action) -> Identity:
        checker = self.checker
        assert checker is not None
        loop = asyncio.get_running_loop()
        what = RESOURCE + (f"/{action.subresource}" if action.subresource else "")
        try:
            who = await loop.run_in_executor(None, checker.authenticate, token)
            if who is not None and not await loop.run_in_executor(
                    None, checker.allowed, who, action):
                role = "cadml-view" if action.verb == "get" else "cadml-edit"
                raise _refuse(403, "forbidden",
                              f"{who.user} may not {action.verb} {what} {action.model} in "
                              f"{action.tenant}; grant the {role} role", user=who.user,
                              resource=what, verb=action.verb, namespace=action.tenant)
        except WorkerError:
            raise
        except Exception as exc:  # the API server is down or refused the worker itself
            log.warning("token check failed: %s", exc)
            raise _refuse(503, "auth_unavailable", "the token could not be checked; retry "
                          "later") from None
        if who is None:
            raise _refuse(401, "unauthenticated", "the token was not accepted")
        return who


GUARD = web.AppKey("write_guard", WriteGuard)
IDENTITY = web.RequestKey("identity", Identity)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(subresource: str, tenant: Callable[[web.Request], tuple[str, str]]
             ) -> Callable[[Handler], Handler]:
    """Wrap a handler: the caller's identity (request[IDENTITY]) is checked before it runs,
    for `create` on `models/<subresource>` (a write) or, with `READS`, for `get` on the
    Model. `tenant` names the (tenant, model) the request acts on."""

    verb = "get" if subresource == READS else "create"

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            guard = request.app[GUARD]
            who = guard.unchecked(verb == "get")  # every search asks: no Action, no await
            if who is None:
                ns, model = tenant(request)
                who = await guard.identify(request.headers.get("Authorization"),
                                           Action(ns, model, subresource, verb))
            request[IDENTITY] = who
            return await handler(request)

        checked.__name__ = handler.__name__
        checked.__doc__ = handler.__doc__
        return checked

    return wrap


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]
