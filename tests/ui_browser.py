"""The web UI in a real headless browser: Debian's Chromium driven by Playwright.

A test module imports the fixtures it uses, and runs its tests in one event loop per
module (the browser is started once per module: Playwright takes seconds to start)::

    from ui_browser import Ui, browser_fixture, ui_fixture  # noqa: F401  (fixtures)

    pytestmark = pytest.mark.asyncio(loop_scope="module")

``ui`` (``ui_fixture``) starts the real services of the test's deployment in-process
against the session's nats-server (orchestrator, index, the demo worker and the gateway
served by uvicorn on a free port) and yields a :class:`Ui`: the gateway's URL, a client,
and a fresh page whose every request that does not go to loopback is refused and
recorded. At the end of the test, no such request and no uncaught page error may have
happened.

Playwright's own browser downloads are never used (``playwright install`` is not run):
the browser is ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``.ci/run``
installs it when missing). Without it, as without Docker for the container tests, they
fail in CI (``CI`` set, as ``.ci/run`` runs them) and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import uvicorn
from helpers import running_demo_worker
from nats.aio.client import Client
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Route,
    async_playwright,
    expect,
)
from playwright.async_api import Request as PwRequest

from contracts.keys import CreateKeyRequest, Scope
from gateway import KeyAuth, create_app
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

__all__ = ["CHROMIUM", "LOOPBACK", "Ui", "browser_fixture", "serve_gateway", "ui_fixture"]

#: Debian's Chromium (the package ``chromium``).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_chromium(*, module: bool = False) -> str:
    """Debian's Chromium, or fail (in CI) or skip (elsewhere) without it.

    In CI a missing browser is a failure, so a run that could not install it cannot
    pass by skipping; on a developer's machine the README's ``uv run pytest`` skips the
    browser tests and says how to get them.
    """
    if not Path(CHROMIUM).exists():
        why = "chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why, allow_module_level=module)
    return CHROMIUM
# The machine the tests share is slow at times: an assertion waits up to this long.
expect.set_options(timeout=15_000)

#: The only hosts a page may reach.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass
class Ui:
    """A running deployment and a browser page pointed at nothing yet."""

    url: str
    page: Page
    context: BrowserContext
    client: NatsflowClient
    settings: NatsSettings
    nc: Client
    key: str | None = None
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def goto(self, path: str) -> Page:
        """Open ``path`` of the gateway (e.g. ``/ui/``) and wait for it to load."""
        await self.page.goto(self.url + path)
        return self.page


@asynccontextmanager
async def serve_gateway(settings: NatsSettings, nc: Client, *,
                        auth: KeyAuth | None = None) -> AsyncIterator[str]:
    """The gateway served by uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    app = create_app(settings, auth=auth, nc=nc, heartbeat=0.5)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    if auth is not None:
        await asyncio.wait_for(app.state.keys.ready.wait(), 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@pytest_asyncio.fixture(name="browser", scope="module", loop_scope="module")
async def browser_fixture() -> AsyncIterator[Browser]:
    """Headless Chromium (Debian's), for the tests of a module."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=require_chromium(), headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            await launched.close()


async def _new_key(nc: Client, settings: NatsSettings) -> str:
    store = await KeyStore.open(nc.jetstream(), Topology(settings.subjects))
    request = CreateKeyRequest(name="ui" + uuid.uuid4().hex[:6], scopes=[Scope.ADMIN],
                               namespaces=["*"])
    made = await store.create(request, now=datetime.now(UTC))
    return made.key


@pytest_asyncio.fixture(name="ui", loop_scope="module")
async def ui_fixture(request: pytest.FixtureRequest, browser: Browser,
             settings: NatsSettings) -> AsyncIterator[Ui]:
    """The services, the gateway and a guarded page. ``@pytest.mark.parametrize("ui",
    [{"auth": True}], indirect=True)`` turns API keys on (an admin key is in ``ui.key``).
    """
    from orchestrator import Orchestrator
    from orchestrator.index import IndexService

    options: dict[str, Any] = getattr(request, "param", None) or {}
    auth = KeyAuth() if options.get("auth") else None
    # Its own connection, in the module's event loop (conftest's ``nc`` is per test loop).
    nc = await connect(settings, name="ui-test")
    orch = Orchestrator(settings, stop_grace=0.5)
    await orch.start()
    index = IndexService(settings, nc=nc)
    await index.start()
    try:
        async with running_demo_worker(settings), serve_gateway(settings, nc,
                                                                 auth=auth) as url:
            key = await _new_key(nc, settings) if auth else None
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            page = await context.new_page()
            state = Ui(url=url, page=page, context=context,
                       client=NatsflowClient(nc, settings.subjects), settings=settings,
                       nc=nc, key=key)

            async def guard(route: Route, req: PwRequest) -> None:
                host = urlsplit(req.url).hostname or ""
                if req.url.startswith(("data:", "blob:", "about:")) or host in LOOPBACK:
                    await route.continue_()
                else:
                    state.refused.append(req.url)
                    await route.abort("blockedbyclient")

            await context.route("**/*", guard)
            page.on("pageerror", lambda exc: state.errors.append(str(exc)))
            page.set_default_timeout(20_000)
            # Every request goes through the guard above (a round trip to Playwright's
            # driver); the viewers' multi-MB bundles load slowly on a loaded 2-core machine.
            page.set_default_navigation_timeout(60_000)
            try:
                yield state
            finally:
                await context.close()
            assert not state.refused, f"requests that left loopback: {state.refused}"
            assert not state.errors, f"uncaught errors in the page: {state.errors}"
    finally:
        await index.stop()
        await orch.stop()
        await nc.close()
