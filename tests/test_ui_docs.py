"""``/docs``, ``/redoc`` and ``/asyncapi`` render with no network but loopback: every
asset is served from the package (gateway/ui/static/vendor), none from a CDN."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect
from ui_browser import Ui, browser_fixture, ui_fixture  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

VENDOR = Path(__file__).parent.parent / "gateway" / "ui" / "static" / "vendor"


async def test_the_documentation_pages_render_offline(ui: Ui) -> None:
    loaded: list[str] = []
    ui.page.on("requestfinished", lambda req: loaded.append(req.url))
    page = await ui.goto("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("natsflow")
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    page = await ui.goto("/redoc")
    await expect(page.locator("h1").first).to_contain_text("natsflow")
    await expect(page.get_by_text("List workflows").first).to_be_attached()
    page = await ui.goto("/asyncapi")
    await expect(page.locator("#asyncapi")).to_contain_text("natsflow")
    await expect(page.locator("#asyncapi")).to_contain_text(re.compile("workflow", re.I))
    # The viewers came from the package (and the guard saw nothing else: see the fixture).
    for asset in ("/ui/vendor/swagger-ui/swagger-ui-bundle.js",
                  "/ui/vendor/redoc/redoc.standalone.js", "/ui/vendor/asyncapi/index.js"):
        assert ui.url + asset in loaded, asset


async def test_no_page_names_a_cdn(ui: Ui) -> None:
    async with httpx.AsyncClient(base_url=ui.url) as http:
        for path in ("/docs", "/redoc", "/asyncapi", "/ui/"):
            html = (await http.get(path)).text
            assert not re.findall(r"(?:src|href)=\"https?://", html), (path, html)


async def test_each_vendored_viewer_comes_with_its_licence() -> None:
    for folder in ("swagger-ui", "redoc", "asyncapi"):
        assert (VENDOR / folder / "LICENSE").stat().st_size > 500, folder
    assert "swagger-ui-dist" in (VENDOR / "README.md").read_text()
