"""``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and the AsyncAPI viewer, with every asset
served from the package (``static/vendor/``, see its README) instead of a CDN: the
documentation works on a machine without internet.
"""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["FAVICON", "VENDOR", "add_offline_docs", "asyncapi_page"]

#: Where the vendored viewers are served.
VENDOR: Final = "/ui/vendor"
#: The pages' icon: the UI's own, so no page asks another host for one.
FAVICON: Final = "/ui/favicon.svg"


def add_offline_docs(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Add ``/docs`` and ``/redoc`` to an app made with ``docs_url=None, redoc_url=None``.

    Plain Starlette routes, as FastAPI's own: outside the OpenAPI schema and the scope
    table, open to anyone (the schema they show is open too).
    """
    title = app.title

    async def swagger(_: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{title} - Swagger UI",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # No badge from validator.swagger.io: nothing leaves the machine.
            swagger_ui_parameters={"validatorUrl": None})

    async def redoc(_: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
                              redoc_favicon_url=FAVICON, with_google_fonts=False)

    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)


def _script_json(value: Any) -> str:
    # Inside <script>: "</script>" (or "<!--") in a description must not end the script.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def asyncapi_page(doc: dict[str, Any]) -> str:
    """An HTML page rendering the AsyncAPI document ``doc`` with the vendored viewer
    (``@asyncapi/react-component``'s standalone bundle)."""
    config = {"show": {"sidebar": True, "info": True, "servers": True, "operations": True,
                       "messages": True, "schemas": True, "errors": True},
              "expand": {"messageExamples": True},
              "sidebar": {"showServers": "byDefault", "showOperations": "byDefault"}}
    title = str(doc.get("info", {}).get("title", "natsflow"))
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{_html_text(title)} AsyncAPI</title>
  <link rel="icon" href="{FAVICON}">
  <link rel="stylesheet" href="{VENDOR}/asyncapi/default.min.css">
  <style>html {{ font-family: ui-sans-serif, system-ui, sans-serif; line-height: 1.5; }}</style>
</head>
<body>
  <div id="asyncapi"></div>
  <script src="{VENDOR}/asyncapi/index.js"></script>
  <script>
    window.AsyncApiStandalone.render(
      {{schema: {_script_json(doc)}, config: {_script_json(config)}}},
      document.getElementById("asyncapi"));
  </script>
</body>
</html>"""


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
