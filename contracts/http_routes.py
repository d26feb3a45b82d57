"""How an operation is reached over the gateway's REST API (one home for that fact).

An :class:`HttpRoute` sits on an operation of :mod:`contracts.operations` (its ``http``)
and says, from the operation's own request model, which HTTP request makes the same
call: the method, the path (``{field}`` filled from the request), the body, the query
and headers, how the caller's ``namespaces`` scope travels, and how the answer reads back
as the operation's reply. The client's HTTP transport (:mod:`natsflow.transports`) is
built from it alone; ``tests/test_transports.py`` checks that the gateway serves every
route declared here at that method and path, with those query parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel

__all__ = ["REST", "HttpRoute", "ReplyShape", "ScopeBy"]

#: ``HttpRoute.body``: every request field not sent in the path, query or headers
#: (``namespaces`` never: over HTTP the API key is the scope), None and defaults left out.
REST: Final = "*"


class ReplyShape(StrEnum):
    """How the gateway's answer reads as the operation's reply."""

    #: The body is the reply model itself.
    BODY = "body"
    #: The body is the reply's ``status`` (or ``{"id"}``, accepted but no status yet).
    STATUS = "status"
    #: As ``STATUS``; ``created`` unless the gateway answered 200 (it existed already).
    STATUS_CREATED = "status-created"


class ScopeBy(StrEnum):
    """How a request's ``namespaces`` scope (narrower than the API key's) is kept."""

    #: The ``namespace`` query parameter (a scope of one namespace).
    QUERY = "query"
    #: The workflow's status in the reply: outside the scope, it is not found.
    REPLY = "reply"
    #: The workflow (``id``) is read first: outside the scope, it is not found and the
    #: command is not sent.
    WORKFLOW = "workflow"


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """The gateway route that serves an operation.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: The path, each ``{field}`` a field of the request, e.g.
            ``/workflows/{id}/signals/{name}``.
        body: What the JSON body is: None (no body), a request field's name (its
            value), :data:`REST`, or a function of the request.
        query: Request field -> query parameter. A list is repeated, a mapping is
            sent as ``key:value`` items, a bool as ``true``/``false``.
        headers: Request field -> header.
        reply: How the answer reads back (:class:`ReplyShape`).
        scope: How a ``namespaces`` scope is kept; None: the route has none (a request
            with one is refused).
    """

    method: str
    path: str
    body: str | Callable[[Any], Any] | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    reply: ReplyShape = ReplyShape.BODY
    scope: ScopeBy | None = None

    @property
    def path_fields(self) -> tuple[str, ...]:
        """The request fields the path is filled from, in order."""
        return tuple(part[1:-1] for part in self.path.split("/")
                     if part.startswith("{") and part.endswith("}"))

    def sent_fields(self) -> frozenset[str]:
        """The request fields sent outside the body (and ``namespaces``)."""
        return frozenset({*self.path_fields, *self.query, *self.headers, "namespaces"})

    def body_of(self, request: BaseModel) -> Any:
        """The JSON body (a JSON-ready value) for ``request``, or None for none."""
        if self.body is None:
            return None
        if callable(self.body):
            return self.body(request)
        if self.body == REST:
            return request.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                                      exclude=set(self.sent_fields()))
        return request.model_dump(mode="json", include={self.body})[self.body]
