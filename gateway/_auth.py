"""Who may call the gateway: API keys, their scopes, and the one table of route -> scope.

Every route the gateway serves is in :data:`ROUTE_SCOPES`, with the scope a key needs,
or ``None`` for the few that stay open (health, docs, metrics, the AsyncAPI document).
The app's route class (:func:`scoped_route_class`) looks each route up when it is added,
so a route missing from the table stops the app from being built at all.

With keys on (:class:`KeyAuth`), a request to a scoped route needs
``Authorization: Bearer <key>``: none, or a key that is unknown, revoked or expired, is
``401 unauthenticated`` with a ``WWW-Authenticate`` challenge; a valid key without the
scope is ``403 forbidden``. Keys are checked against an in-memory copy of the keys
bucket, kept current by a KV watch (:class:`KeyCache`), so a revocation reaches every
gateway as fast as NATS delivers it. The key itself is never logged, nor echoed in any
answer: only its public id is.

Every route that reads or touches workflows, batches or definitions takes the caller
(:data:`Caller`) and hands :attr:`Principal.namespace_scope` to the client call, so the
orchestrator and the index enforce the key's namespaces; a create that names no
namespace goes to :attr:`Principal.home_namespace` (:meth:`Principal.place`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import Depends, Query, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from pydantic import BaseModel

from contracts.errors import Forbidden, Unauthenticated, Unavailable
from contracts.keys import ALL_NAMESPACES, ALL_SCOPES, Scope, StoredKey, key_id_of
from contracts.namespaces import DEFAULT_NAMESPACE
from contracts.subjects import TOKEN_RE
from transport.keys import KeyStore, watch_keys
from transport.streams import Topology, patiently

from ._bodies import DecodedBodyRoute
from ._link import NatsLink
from ._problems import problem_responses

__all__ = [
    "ANONYMOUS",
    "ROUTE_SCOPES",
    "Caller",
    "SECURITY_SCHEME",
    "KeyAuth",
    "KeyCache",
    "Principal",
    "current_principal",
    "namespace_query",
    "scoped_route_class",
]

_log = logging.getLogger("natsflow.gateway.auth")

_READ, _WRITE = Scope.WORKFLOWS_READ, Scope.WORKFLOWS_WRITE
_DEF_READ, _DEF_WRITE, _ADMIN = Scope.DEFINITIONS_READ, Scope.DEFINITIONS_WRITE, Scope.ADMIN

#: The one table: every route (method, path template) and the scope a key needs for it;
#: ``None``: open to anyone, also with keys on.
ROUTE_SCOPES: Final[Mapping[tuple[str, str], Scope | None]] = {
    ("POST", "/workflows"): _WRITE,
    ("GET", "/workflows"): _READ,
    ("GET", "/workflows/{workflow_id}"): _READ,
    ("POST", "/workflows/{workflow_id}/start"): _WRITE,
    ("POST", "/workflows/{workflow_id}/stop"): _WRITE,
    ("POST", "/workflows/{workflow_id}/signals/{name}"): _WRITE,
    ("POST", "/workflows/{workflow_id}/pause"): _WRITE,
    ("POST", "/workflows/{workflow_id}/resume"): _WRITE,
    ("POST", "/workflows/{workflow_id}/retry"): _WRITE,
    ("POST", "/workflows/{workflow_id}/rerun"): _WRITE,
    ("GET", "/workflows/{workflow_id}/events"): _READ,
    ("GET", "/events"): _READ,
    ("POST", "/workflows/bulk/{operation}"): _ADMIN,
    ("POST", "/batches"): _ADMIN,
    ("GET", "/batches/{batch_id}"): _ADMIN,
    ("POST", "/batches/{batch_id}/stop"): _ADMIN,
    ("PUT", "/definitions/{name}"): _DEF_WRITE,
    ("GET", "/definitions"): _DEF_READ,
    ("GET", "/definitions/{name}"): _DEF_READ,
    ("GET", "/definitions/{name}/versions/{version}"): _DEF_READ,
    ("POST", "/schedules"): _WRITE,
    ("GET", "/schedules"): _READ,
    ("GET", "/schedules/{name}"): _READ,
    ("POST", "/schedules/{name}/pause"): _WRITE,
    ("POST", "/schedules/{name}/unpause"): _WRITE,
    ("POST", "/schedules/{name}/trigger"): _WRITE,
    ("POST", "/schedules/{name}/backfill"): _WRITE,
    ("DELETE", "/schedules/{name}"): _WRITE,
    ("GET", "/dead-letters"): _ADMIN,
    ("POST", "/triggers"): _ADMIN,
    ("GET", "/triggers"): _DEF_READ,
    ("GET", "/triggers/{name}"): _DEF_READ,
    ("GET", "/triggers/{name}/stats"): _DEF_READ,
    ("POST", "/triggers/{name}/pause"): _ADMIN,
    ("POST", "/triggers/{name}/resume"): _ADMIN,
    ("DELETE", "/triggers/{name}"): _ADMIN,
    ("GET", "/limits"): _READ,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/asyncapi"): None,
    ("GET", "/asyncapi.json"): None,
    # The web UI's entry (gateway.ui): a redirect to its files; their data needs a key.
    ("GET", "/"): None,
}

#: The OpenAPI security scheme's name.
SECURITY_SCHEME: Final = "ApiKey"

_bearer = HTTPBearer(
    auto_error=False, scheme_name=SECURITY_SCHEME, bearerFormat="nfk_<id>_<secret>",
    description="An API key from `natsflow keys create`, sent as "
                "`Authorization: Bearer <key>`. Each operation names the scope it needs; "
                "`admin` has every scope.")


@dataclass(frozen=True, slots=True)
class KeyAuth:
    """API keys on: how the gateway checks them.

    Args:
        replicas: JetStream replicas of the keys bucket, if the gateway creates it.
        touch_interval: A key's ``last_used_at`` is written at most once per this many
            seconds by each gateway (not on every request).
    """

    replicas: int = 1
    touch_interval: float = 60.0


#: A body to create that has a ``namespace`` field (WorkflowConfig, RunDefinition,
#: BatchConfig).
_Placed = TypeVar("_Placed", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the key's id and name, its scopes and namespaces."""

    key_id: str | None
    name: str
    scopes: frozenset[Scope]
    namespaces: frozenset[str]

    def grants(self, scope: Scope) -> bool:
        """Whether the principal may do what ``scope`` covers (``admin``: everything)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def sees(self, namespace: str) -> bool:
        """Whether the principal may touch ``namespace``."""
        return ALL_NAMESPACES in self.namespaces or namespace in self.namespaces

    @property
    def namespace_scope(self) -> list[str] | None:
        """The ``namespaces`` scope of every client call made for the principal: None
        (unrestricted) for a key bound to ``*``, else its namespaces, sorted."""
        if ALL_NAMESPACES in self.namespaces:
            return None
        return sorted(self.namespaces)

    @property
    def home_namespace(self) -> str:
        """Where what names no namespace goes: the key's namespace when it is bound to
        exactly one (as a Hatchet token is to its tenant), else ``default``."""
        if len(self.namespaces) == 1 and ALL_NAMESPACES not in self.namespaces:
            return next(iter(self.namespaces))
        return DEFAULT_NAMESPACE

    def place(self, body: _Placed) -> _Placed:
        """``body`` (a workflow, batch or definition run to create), in the
        :attr:`home_namespace` unless it names its namespace itself."""
        home = self.home_namespace
        if "namespace" in body.model_fields_set or home == DEFAULT_NAMESPACE:
            return body
        # Not re-validated: home is one of the key's namespaces, each checked as a token.
        return body.model_copy(update={"namespace": home})


#: The principal of every request when keys are off (and of open routes).
ANONYMOUS: Final = Principal(key_id=None, name="anonymous", scopes=ALL_SCOPES,
                             namespaces=frozenset({ALL_NAMESPACES}))


class KeyCache:
    """The keys bucket, in memory and kept current by a KV watch.

    Args:
        link: The gateway's NATS link.
        topology: Where the keys bucket is (and how to declare it).
        touch_interval: Seconds between two ``last_used_at`` writes for one key.
    """

    def __init__(self, link: NatsLink, topology: Topology, *, touch_interval: float) -> None:
        self._link = link
        self._topology = topology
        self._touch_interval = touch_interval
        self._keys: dict[str, StoredKey] = {}
        self._touched: dict[str, float] = {}  # key id -> monotonic time of the last write
        self._store: KeyStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    def start(self) -> None:
        """Begin loading and following the keys bucket in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="natsflow-gateway-keys")

    async def close(self) -> None:
        """Stop following; wait for the last-use writes in flight."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writes:
            await asyncio.wait(self._writes, timeout=2.0)
        # A later start loads the keys again (a lifespan may be run more than once).
        self.ready.clear()
        self._keys, self._store = {}, None

    async def _follow(self) -> None:
        nc = await self._link.connection()
        js = nc.jetstream()
        while True:
            try:
                if self._store is None:
                    self._store = await patiently(
                        "the keys bucket", lambda: KeyStore.open(js, self._topology))
                await self._watch(self._store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Every key is refused meanwhile (503): say why, and keep trying.
                _log.warning("cannot read the API keys (%s: %s); trying again",
                             type(exc).__name__, exc)
            await asyncio.sleep(1.0)

    async def _watch(self, store: KeyStore) -> None:
        seen: dict[str, StoredKey] = {}
        loading = True
        async with aclosing(watch_keys(store.kv)) as changes:
            async for change in changes:
                if change is None:
                    # The full set swapped in at once: a restarted watch must not keep
                    # a key that was deleted while it was down.
                    self._keys, loading = seen, False
                    self.ready.set()
                    continue
                key_id, stored = change
                target = seen if loading else self._keys
                if stored is None:
                    target.pop(key_id, None)
                else:
                    target[key_id] = stored

    def check(self, key: str, *, now: datetime) -> Principal:
        """The principal of a presented key.

        Raises:
            Unavailable: the keys are not loaded yet (NATS is not reachable).
            Unauthenticated: the key is unknown, revoked or expired.
        """
        if not self.ready.is_set():
            raise Unavailable("API keys are not loaded yet (is NATS reachable?)")
        key_id = key_id_of(key)
        stored = self._keys.get(key_id) if key_id else None
        if stored is None or not stored.key.matches(key):
            raise Unauthenticated("the API key is not valid (unknown or revoked)",
                                  invalid_token=True)
        record = stored.key
        if record.expired(now):
            raise Unauthenticated(f"the API key {record.id} expired at "
                                  f"{record.expires_at:%Y-%m-%dT%H:%M:%SZ}",
                                  invalid_token=True)
        self._touch(stored, now)
        return Principal(key_id=record.id, name=record.name, scopes=frozenset(record.scopes),
                         namespaces=frozenset(record.namespaces))

    def _touch(self, stored: StoredKey, now: datetime) -> None:
        clock = time.monotonic()
        last = self._touched.get(stored.key.id)
        if last is not None and clock - last < self._touch_interval:
            return
        self._touched[stored.key.id] = clock
        if self._store is not None:
            task = asyncio.create_task(self._store.touch(stored, now=now))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)


async def _authorize(
    request: Request, security_scopes: SecurityScopes,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthenticated("this needs an API key: Authorization: Bearer <key>")
    cache: KeyCache = request.app.state.keys
    principal = cache.check(credentials.credentials, now=datetime.now(UTC))
    for needed in security_scopes.scopes:
        if not principal.grants(Scope(needed)):
            raise Forbidden(f"the API key {principal.key_id} lacks the scope {needed}",
                            details={"scope": needed})
    request.state.principal = principal
    return principal


async def current_principal(request: Request) -> Principal:
    """Who the request acts for (a dependency: ``Depends(current_principal)``).

    :data:`ANONYMOUS` when keys are off; with keys on, the principal of the key the
    route's scope check accepted.
    """
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    if getattr(request.app.state, "keys", None) is None:
        return ANONYMOUS
    # An open route: nobody in particular, allowed nothing.
    return Principal(key_id=None, name="anonymous", scopes=frozenset(),
                     namespaces=frozenset())


#: A route's caller: ``caller: Caller`` in its signature.
Caller = Annotated[Principal, Depends(current_principal)]


def namespace_query(description: str) -> Any:
    """A ``namespace`` query parameter (one namespace name), described for the route."""
    return Query(min_length=1, max_length=64, pattern=TOKEN_RE.pattern,
                 description=description)


def route_scope(method: str, path: str) -> Scope | None:
    """The scope a route needs, from :data:`ROUTE_SCOPES`.

    Raises:
        LookupError: the route is not in the table.
    """
    try:
        return ROUTE_SCOPES[(method.upper(), path)]
    except KeyError:
        raise LookupError(f"route {method.upper()} {path} has no entry in "
                          "gateway._auth.ROUTE_SCOPES: give it a scope (or None)") from None


def scoped_route_class(auth: KeyAuth | None) -> type[APIRoute]:
    """The app's route class: each route gets its scope check from :data:`ROUTE_SCOPES`
    (and its body decoding from :data:`gateway._bodies.BODY_RULES`).

    With keys off nothing is checked, but every route must still be in the table.
    """

    class ScopedRoute(DecodedBodyRoute):
        def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
            scopes = {route_scope(m, path) for m in kwargs.get("methods") or ["GET"]}
            if len(scopes) != 1:
                raise LookupError(f"route {path}: its methods need different scopes")
            scope = scopes.pop()
            if auth is not None and scope is not None:
                kwargs["dependencies"] = [Security(_authorize, scopes=[scope.value]),
                                          *(kwargs.get("dependencies") or [])]
                kwargs["responses"] = {**problem_responses(401, 403),
                                       **(kwargs.get("responses") or {})}
            super().__init__(path, endpoint, **kwargs)

    return ScopedRoute

