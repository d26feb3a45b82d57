"""NATS servers of a fault test's own, and a natsflow deployment running against them.

:class:`NatsNode` is one ``nats-server`` process (alone, or one node of a loopback
cluster) that can be SIGTERMed, SIGKILLed, SIGSTOPped and started again on the same
port with the same store directory. :func:`deployment` runs an orchestrator, a demo
worker and the gateway (a real uvicorn on a free port) in this process, connected to
every URL given. Nothing here mocks NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import uvicorn
from helpers import Probe, running_demo_worker
from nats.aio.client import Client

from contracts.models import WORKFLOW_TERMINAL
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.embedded import find_nats_server, free_port
from natsflow.promises import Violation, check_all
from orchestrator import Orchestrator
from transport.connect import NatsSettings, connect

__all__ = ["Answer", "Deployment", "Load", "NatsNode", "cluster", "deployment", "fan_in",
           "wait_for_meta_leader", "wait_terminal"]


class NatsNode:
    """One nats-server with JetStream; restartable on the same port and store dir.

    Args:
        store_dir: JetStream's store directory (kept across restarts).
        name: Server name (``-n``); cluster nodes need distinct ones.
        cluster_port: Route port, for a cluster node.
        routes: Route URLs of the cluster (this node's own may be among them).
        cluster_name: The cluster's name.
    """

    def __init__(self, store_dir: Path, *, name: str = "n1", cluster_port: int | None = None,
                 routes: Sequence[str] = (), cluster_name: str = "natsflow") -> None:
        self.store_dir = store_dir
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.cluster_name = cluster_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  # SIGSTOPped
        self.log_file = store_dir.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsNode:
        """Start (or start again) and wait until the client port answers INFO."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), "-n", self.name]
        if self.cluster_port is not None:
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--cluster_name", self.cluster_name, "--routes", ",".join(self.routes)]
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.stopped = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with "
                                   f"{self.proc.returncode}; see {self.log_file}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                if s.recv(4).startswith(b"INFO"):
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {self.name} did not start on {self.url}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def end(self, sig: signal.Signals, timeout: float = 15.0) -> None:
        """Send SIGTERM or SIGKILL and wait until the process is gone."""
        assert self.proc is not None
        if self.stopped:
            self.resume()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        """Teardown: whatever state it is in, the process is gone afterwards."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot die of TERM
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def cluster(tmp: Path, size: int = 3) -> Iterator[list[NatsNode]]:
    """``size`` clustered nodes on loopback with JetStream, each its own store dir."""
    ports = [free_port() for _ in range(size)]
    routes = [f"nats://127.0.0.1:{p}" for p in ports]
    nodes = [NatsNode(tmp / f"store-n{i + 1}", name=f"n{i + 1}", cluster_port=p,
                      routes=routes, cluster_name="fault") for i, p in enumerate(ports)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.close()


async def wait_for_meta_leader(urls: Sequence[str], *, timeout: float = 30.0) -> None:
    """Wait until JetStream answers in the cluster (its meta leader is elected)."""
    nc = await nats.connect(servers=list(urls), connect_timeout=2)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                msg = await nc.request("$JS.API.INFO", b"", timeout=1.0)
                if b'"error"' not in msg.data:
                    return
            except nats.errors.Error:
                pass
            if loop.time() > deadline:
                raise TimeoutError("no JetStream meta leader")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def fan_in(i: int, tag: str) -> dict[str, Any]:
    """Two parallel steps, then a join: every workflow has results racing to the engine."""
    return {"name": "fan-in", "id": f"{tag}-{i}", "input": {"n": i}, "steps": [
        {"id": "one", "task": "demo.add", "input": {"a": "${input.n}", "b": 1}},
        {"id": "two", "task": "demo.add", "input": {"a": "${input.n}", "b": 2}},
        {"id": "three", "task": "demo.add", "depends_on": ["one", "two"],
         "input": {"a": "${steps.one.output.sum}", "b": "${steps.two.output.sum}"}}]}


@dataclass
class Deployment:
    """A running deployment: its settings, a client, the gateway's URL, the worker probe."""

    settings: NatsSettings
    nc: Client
    client: NatsflowClient
    http: httpx.AsyncClient
    orchestrator: Orchestrator
    probe: Probe
    gateway_url: str
    states: list[str] = field(default_factory=list)  # the test client's connection states

    async def check(self, ids: Sequence[str]) -> list[Violation]:
        """Promises 1-3 over ``ids``, read back from the deployment."""
        checked, violations = await check_all(self.client, ids)
        assert checked == len(set(ids))
        return violations


class _Uvicorn(uvicorn.Server):
    """uvicorn that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _gateway(settings: NatsSettings, *, request_timeout: float
                   ) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(create_app(settings, auth=None, request_timeout=request_timeout),
                            host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                            log_config=None)
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def deployment(urls: Sequence[str], prefix: str, *, replicas: int = 1,
                     request_timeout: float = 5.0) -> AsyncIterator[Deployment]:
    """An orchestrator, a demo worker and a uvicorn gateway on ``urls``."""
    settings = NatsSettings(servers=list(urls), prefix=prefix)
    states: list[str] = []

    async def on_state(state: str) -> None:
        states.append(state)

    nc = await connect(settings, name="fault-test", on_state=on_state)
    orch = Orchestrator(settings, replicas=replicas, stop_grace=1.0, builtins=False)
    await orch.start()
    try:
        async with running_demo_worker(settings) as probe, \
                _gateway(settings, request_timeout=request_timeout) as url, \
                httpx.AsyncClient(base_url=url, timeout=30.0,
                                  # idle connections end before uvicorn's 5 s keep-alive
                                  # does: a POST on a connection the server is closing
                                  # fails with ReadError, and is not retried.
                                  limits=httpx.Limits(keepalive_expiry=2.0)) as http:
            yield Deployment(settings, nc, NatsflowClient(nc, settings.subjects), http, orch,
                             probe, url, states)
    finally:
        await orch.stop()
        await nc.close()


@dataclass(frozen=True)
class Answer:
    """One POST /workflows: when it was sent and answered (loop time), and how."""

    workflow_id: str
    sent: float
    answered: float
    status: int
    headers: httpx.Headers
    body: dict[str, object]


class Load:
    """Creates workflows through the gateway at a steady pace, whatever the answers."""

    def __init__(self, d: Deployment, tag: str, *, every: float = 0.03,
                 in_flight: int = 32) -> None:
        self.d = d
        self.tag = tag
        self.every = every
        self.answers: list[Answer] = []
        self._limit = asyncio.Semaphore(in_flight)
        self._stop = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        self.failed: list[BaseException] = []  # sends the gateway did not answer
        self._pace = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            await self._limit.acquire()
            task = asyncio.create_task(self._create(i))
            self._sends.add(task)
            task.add_done_callback(self._done)
            i += 1
            await asyncio.sleep(self.every)

    async def _create(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        config = fan_in(i, self.tag)
        sent = loop.time()
        try:
            r = await self.d.http.post("/workflows", json=config)
            self.answers.append(Answer(str(config["id"]), sent, loop.time(), r.status_code,
                                       r.headers, r.json()))
        finally:
            self._limit.release()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed.append(task.exception())  # type: ignore[arg-type]

    def accepted(self, *, after: float = 0.0) -> list[str]:
        return [a.workflow_id for a in self.answers if a.status < 300 and a.sent >= after]

    async def until_accepted(self, n: int, *, after: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.accepted(after=after)) < n:
            assert loop.time() < deadline, (
                f"only {len(self.accepted(after=after))} creates accepted in {timeout}s; "
                f"last answers {[(a.status, a.body) for a in self.answers[-3:]]}")
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Load:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:  # the test failed: do not wait for the sends
            self._pace.cancel()
            for task in list(self._sends):
                task.cancel()
            await asyncio.gather(self._pace, *self._sends, return_exceptions=True)
        elif not self._stop.is_set():
            await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await self._pace
        # A send that failed at the HTTP level (the gateway did not answer) fails here:
        # finished sends left `_sends` as they ended, their errors are in `failed`.
        await asyncio.gather(*self._sends, return_exceptions=True)
        assert not self.failed, (f"{len(self.failed)} creates got no HTTP answer: "
                                 f"{self.failed[:3]!r}")



async def wait_terminal(client: NatsflowClient, ids: Sequence[str], *,
                        timeout: float) -> None:
    """Wait until every workflow of ``ids`` is stored in a terminal state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    left = set(ids)
    while left:
        for wid in sorted(left)[:64]:
            with contextlib.suppress(Exception):
                reply = await client.get(wid)
                if reply.status is not None and reply.status.state in WORKFLOW_TERMINAL:
                    left.discard(wid)
        if not left:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{len(left)} workflows not terminal after {timeout}s: "
                                 f"{sorted(left)[:5]}")
        await asyncio.sleep(0.3)
