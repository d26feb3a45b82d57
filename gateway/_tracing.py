"""A server span per HTTP request, when tracing is on (see :mod:`transport.tracing`).

The span is a child of the request's ``traceparent``; the client calls made while it
is current carry its context over NATS. With tracing off nothing is made, and the
routes hand the request's own context on unchanged (:func:`request_trace`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transport import tracing
from transport.tracing import TraceContext

__all__ = ["install_tracing", "request_trace"]


def request_trace(request: Request) -> TraceContext | None:
    """The W3C trace context the HTTP request came with (None if none or malformed)."""
    return tracing.extract(request.headers)


class _TracingMiddleware:
    """Pure ASGI middleware: runs each HTTP request inside a server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracing.span(f"HTTP {scope['method']}", tracing.extract(headers), kind="server",
                          attributes={"http.request.method": scope["method"],
                                      "url.path": scope["path"]}):
            try:
                await self.app(scope, receive, send_status)
            finally:
                if status >= 500:
                    tracing.mark_error(f"http-{status}", f"answered {status}")


def install_tracing(app: FastAPI) -> None:
    """Trace the app's requests (decided per request, so enabling later works too)."""
    app.add_middleware(_TracingMiddleware)
