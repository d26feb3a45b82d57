"""``GET /asyncapi.json`` and ``GET /asyncapi``: the NATS interface, next to ``/docs``.

The document is :func:`natsflow.asyncapi.asyncapi_schema` for the gateway's own prefix,
built on the first request (it needs no NATS) and kept. Like ``/docs`` and
``/openapi.json``, neither route is in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from contracts.subjects import Subjects

from .._deps import SubjectsOf

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@cache
def _build(subjects: Subjects) -> tuple[str, str]:
    # Imported here: FastStream takes a noticeable while to import, and only these
    # two routes need it.
    from natsflow.asyncapi import asyncapi_html, asyncapi_schema

    doc: dict[str, Any] = asyncapi_schema(subjects)
    return json.dumps(doc), asyncapi_html(doc)


async def _document(subjects: Subjects) -> tuple[str, str]:
    # Building takes a few hundred milliseconds: not on the event loop.
    return await asyncio.to_thread(_build, subjects)


@router.get("/asyncapi.json")
async def asyncapi_document(subjects: SubjectsOf) -> Response:
    body, _ = await _document(subjects)
    return Response(body, media_type="application/json")


@router.get("/asyncapi")
async def asyncapi_viewer(subjects: SubjectsOf) -> HTMLResponse:
    _, page = await _document(subjects)
    return HTMLResponse(page)
