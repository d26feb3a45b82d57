"""``GET /asyncapi.json`` and ``GET /asyncapi``: the NATS interface, next to ``/docs``.

The document is :func:`natsflow.asyncapi.asyncapi_schema` for the gateway's own prefix,
built on the first request (it needs no NATS) and kept.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse

from contracts.subjects import Subjects

__all__ = ["add_asyncapi_routes"]


def add_asyncapi_routes(app: FastAPI, subjects: Subjects) -> None:
    """Serve the AsyncAPI document of ``subjects`` as JSON and as an HTML viewer.

    Like ``/docs`` and ``/openapi.json``, neither route is in the OpenAPI schema.
    """

    @cache
    def build() -> tuple[str, str]:
        # Imported here: FastStream takes a noticeable while to import, and only these
        # two routes need it.
        from natsflow.asyncapi import asyncapi_html, asyncapi_schema

        doc: dict[str, Any] = asyncapi_schema(subjects)
        return json.dumps(doc), asyncapi_html(doc)

    async def document() -> tuple[str, str]:
        # Building takes a few hundred milliseconds: not on the event loop.
        return await asyncio.to_thread(build)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_document() -> Response:
        body, _ = await document()
        return Response(body, media_type="application/json")

    @app.get("/asyncapi", include_in_schema=False)
    async def asyncapi_viewer() -> HTMLResponse:
        _, page = await document()
        return HTMLResponse(page)
