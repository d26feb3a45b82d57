"""The web UI: static pages under ``/ui/``, served from the package, and ``/`` leading there.

The UI is a client of the public REST API and its Server-Sent Events like any other: the
pages, scripts and styles are public (they hold no data), and every piece of data is
fetched by the browser from the API, with the API key the person gave (kept in the tab's
``sessionStorage``). There is no build step: plain HTML, ES modules and CSS in
``static/``, shipped in the wheel as package data.

    from gateway.ui import add_ui
    add_ui(app)        # GET / -> /ui/, GET /ui/... the files of static/
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from gateway.ui._docs import add_offline_docs, asyncapi_page

__all__ = ["STATIC_DIR", "UI_PATH", "add_offline_docs", "add_ui", "asyncapi_page"]

#: Where the UI's files are in the package.
STATIC_DIR: Final = Path(__file__).parent / "static"
#: Where the gateway serves them.
UI_PATH: Final = "/ui"


def add_ui(app: FastAPI) -> None:
    """Serve the UI's files at ``/ui/`` (``index.html`` for a folder) and redirect ``/``.

    ``GET /`` is in ``ROUTE_SCOPES`` as an open route; the mount is not a route of the
    API and needs no entry: the files are the same for everyone.
    """

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    app.mount(UI_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="ui")
