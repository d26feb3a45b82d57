"""What a route takes through ``Depends``: the NATS link, the caller's namespaces, the trace.

A route names them in its signature (``nats: Nats, namespaces: Namespaces``); the caller
itself is :data:`gateway._auth.Caller`. The app's state holds what they hand out
(``create_app`` sets it), so a router module needs no closure over the app.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from contracts.subjects import Subjects
from transport.tracing import TraceContext

from ._auth import Caller
from ._link import NatsLink
from ._tracing import request_trace

__all__ = ["Heartbeat", "Nats", "Namespaces", "SubjectsOf", "Trace", "get_link"]


def get_link(request: Request) -> NatsLink:
    """The app's link to NATS; ``nats.client()`` is the client, or 503 while away.

    The link rather than the client: FastAPI solves dependencies before it validates
    parameters and body, and a request that is wrong stays a 400 while NATS is away.
    """
    return cast(NatsLink, request.app.state.link)


def namespace_scope(caller: Caller) -> list[str] | None:
    """The ``namespaces`` scope of the client calls made for the caller."""
    return caller.namespace_scope


def heartbeat(request: Request) -> float:
    """Seconds between ``: keep-alive`` comments on an idle event stream."""
    return cast(float, request.app.state.heartbeat)


def subjects(request: Request) -> Subjects:
    """The subjects of the deployment the gateway serves."""
    return cast(Subjects, request.app.state.subjects)


#: The NATS link: ``nats: Nats``.
Nats = Annotated[NatsLink, Depends(get_link)]
#: The caller's namespace scope for the client call: ``namespaces: Namespaces``.
Namespaces = Annotated[list[str] | None, Depends(namespace_scope)]
#: The W3C trace context the request came with: ``trace: Trace``.
Trace = Annotated[TraceContext | None, Depends(request_trace)]
#: The event streams' keep-alive interval.
Heartbeat = Annotated[float, Depends(heartbeat)]
#: The deployment's subjects.
SubjectsOf = Annotated[Subjects, Depends(subjects)]
