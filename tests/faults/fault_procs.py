"""Real natsflow processes for the fault suite: started, supervised, killed, and read back.

Each service runs as a user runs it (``python -m natsflow.cli orchestrator`` / ``worker``)
against the session's nats-server with the test's prefix. A :class:`Service` that dies is
started again by :func:`supervise`, as systemd or Kubernetes would; each life logs to
its own file so a failing test can show what each process said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.errors import Unavailable
from contracts.models import EVENT_TERMINAL, WorkflowState, WorkflowStatus
from natsflow.client import NatsflowClient
from natsflow.promises import Violation, check_workflow, collect
from transport.connect import NatsSettings

__all__ = ["Service", "create_until_accepted", "drain", "killer", "oracle", "supervise",
           "workload"]

HERE = Path(__file__).resolve().parent
#: Engine ack wait of the fault deployments: how long a crashed orchestrator's work waits.
ENGINE_ACK_WAIT = 3.0
#: Task ack wait of the ledger worker: how long a crashed worker's task waits.
TASK_ACK_WAIT = 2.0


@dataclass
class Service:
    """One natsflow service process, restartable; ``deaths`` holds each life's exit code.

    Args:
        name: For log file names.
        argv: Arguments after ``natsflow``.
        settings: The deployment (its URL and prefix go to the child's environment).
        log_dir: Where each life's output goes (``<name>-<life>.log``).
        env: More environment for every life.
        env_of_life: More environment for one life (by its number, from 0).
        ready_line: Text in the log that means the service is serving.
    """

    name: str
    argv: list[str]
    settings: NatsSettings
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    env_of_life: Callable[[int], dict[str, str]] = lambda life: {}
    ready_line: str = "ready"
    proc: subprocess.Popen[bytes] | None = None
    lives: int = 0
    deaths: list[int] = field(default_factory=list)
    dead_pids: list[int] = field(default_factory=list)
    restart: bool = True

    def start(self) -> Service:
        """Start a new life."""
        env = {**os.environ, "NATS_URL": ",".join(self.settings.servers),
               "NATSFLOW_PREFIX": self.settings.prefix,
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               **self.env, **self.env_of_life(self.lives)}
        with open(self.log_path(self.lives), "wb") as out:  # the child keeps its own fd
            self.proc = subprocess.Popen([sys.executable, "-m", "natsflow.cli", *self.argv],
                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.lives += 1
        return self

    def log_path(self, life: int) -> Path:
        return self.log_dir / f"{self.name}-{life}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """This life has logged its ready line."""
        if not self.alive():
            return False
        try:
            return self.ready_line in self.log_path(self.lives - 1).read_text(errors="replace")
        except OSError:
            return False

    def reap(self) -> int | None:
        """The exit code if this life has ended (recorded once in ``deaths``)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.deaths.append(code)
        self.dead_pids.append(self.proc.pid)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL this life and see it gone (the supervisor starts the next one)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)  # a SIGKILLed process is gone in milliseconds

    def stop(self) -> None:
        """End for good: no restart; SIGKILL, nothing to clean up that NATS does not keep."""
        self.restart = False
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def logs(self, tail: int = 3000) -> str:
        text = "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                       for p in sorted(self.log_dir.glob(f"{self.name}-*.log")))
        return text[-4 * tail:]


async def wait_ready(services: Iterable[Service], timeout: float = 30.0) -> None:
    """Until every service has logged its ready line."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for svc in services:
        while not svc.ready():
            if loop.time() > deadline:
                raise AssertionError(f"{svc.name} not ready in {timeout}s:\n{svc.logs()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def supervise(*services: Service) -> AsyncIterator[None]:
    """Start the services, restart each one that dies, and kill them all on the way out."""

    async def watch() -> None:
        while True:
            for svc in services:
                if svc.reap() is not None and svc.restart:
                    svc.start()
            await asyncio.sleep(0.05)

    watcher: asyncio.Task[None] | None = None
    try:
        for svc in services:
            svc.start()
        watcher = asyncio.create_task(watch())
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for svc in services:
            svc.stop()


async def killer(service: Service, *, seed: int, until: asyncio.Event,
                 between: tuple[float, float] = (0.5, 1.5)) -> list[float]:
    """SIGKILL ``service`` a random 0.5-1.5 s after each life became ready, until ``until``.

    Returns:
        The loop time of each kill.
    """
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    kills: list[float] = []
    while not until.is_set():
        await wait_ready([service])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), rng.uniform(*between))
        if until.is_set():
            break
        service.kill()
        kills.append(loop.time())
    return kills


def workload(n: int, *, seed: int, sleepy: float = 0.3) -> list[dict[str, Any]]:
    """``n`` small DAGs of demo tasks (2-4 steps), some with a retried flaky step.

    Every one of them completes when nothing goes wrong, with a known output. A share
    (``sleepy``) of steps sleep 50-150 ms, so that work is in flight when a crash comes.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 100), rng.randint(0, 100)
        first: dict[str, Any] = {"id": "a", "task": "demo.add", "input": {"a": a, "b": b}}
        if rng.random() < sleepy:
            first = {"id": "a", "task": "demo.sleep", "input": {"seconds": 0.1}}
        flaky = {"id": "f", "task": "demo.flaky", "input": {"fail_times": 1},
                 "retry": {"max_attempts": 3, "initial_interval": 0.05}}
        shape = rng.choice(["chain", "fan-in", "diamond"])
        steps: list[dict[str, Any]]
        if shape == "chain":  # a -> b
            steps = [first, {"id": "b", "task": "demo.echo", "depends_on": ["a"],
                             "input": {"i": i}}]
        elif shape == "fan-in":  # a, f -> c
            steps = [first, flaky, {"id": "c", "task": "demo.add", "depends_on": ["a", "f"],
                                    "input": {"a": i, "b": "${steps.f.output.attempt}"}}]
        else:  # a -> f, b -> d
            steps = [first, {**flaky, "depends_on": ["a"]},
                     {"id": "b", "task": "demo.echo", "depends_on": ["a"], "input": {"i": i}},
                     {"id": "d", "task": "demo.add", "depends_on": ["f", "b"],
                      "input": {"a": "${steps.b.output.i}", "b": "${steps.f.output.attempt}"}}]
        out.append({"name": f"fault-{shape}", "id": f"wf-{i}", "steps": steps})
    return out


async def create_until_accepted(client: NatsflowClient, config: dict[str, Any]) -> int:
    """``workflow.create`` until the API answers, as a careful client does; the tries.

    A retry with the same id and config is a no-op for the engine, so retrying through
    a crash cannot create the workflow twice.
    """
    tries = 0
    while True:
        tries += 1
        try:
            reply = await client.create(config)
        except Unavailable:  # no responders, or no answer in time (EngineTimeout)
            await asyncio.sleep(0.2)
            continue
        assert reply.id == config["id"]
        return tries


async def submit_all(client: NatsflowClient, configs: list[dict[str, Any]], *,
                     rate: float = 0.0) -> None:
    """Even ones through the API (retried until answered), odd ones fire-and-forget.

    With ``rate`` > 0, at about that many workflows per second (so that crashes come
    while work keeps arriving).
    """
    limit = asyncio.Semaphore(16)
    pending: list[asyncio.Task[int]] = []

    async def api(config: dict[str, Any]) -> int:
        async with limit:
            return await create_until_accepted(client, config)

    for i, config in enumerate(configs):
        if i % 2 == 0:
            pending.append(asyncio.create_task(api(config)))
        else:
            await client.submit(config)  # a JetStream ack: accepted, whatever runs
        if rate:
            await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*pending)


async def drain(client: NatsflowClient, ids: Iterable[str], *, timeout: float = 60.0
                ) -> set[str]:
    """Wait until every workflow of ``ids`` has a terminal event; the ones still open.

    Reads the events stream from the start, so events before the call count too.
    """
    want = set(ids)
    ended: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = 0
    while want - ended and loop.time() < deadline:
        feed = client.event_feed(client.subjects.events_of("*", "workflow.*"),
                                 deliver_all=True, after_stream_seq=last, idle_timeout=1.0)
        async with contextlib.aclosing(feed):
            async for seq, event in feed:
                last = seq
                if event.type in EVENT_TERMINAL:
                    ended.add(event.workflow_id)
                if not want - ended or loop.time() > deadline:
                    break
    return want - ended


async def oracle(client: NatsflowClient, ids: Iterable[str]
                 ) -> tuple[dict[str, WorkflowStatus | None], list[Violation]]:
    """Every workflow's stored status, and every violation of promises 1-3 among them."""
    found = await collect(client, ids)
    violations = [v for wid, (status, events) in found.items()
                  for v in check_workflow(wid, status, events)]
    return {wid: status for wid, (status, _) in found.items()}, violations


def not_completed(statuses: dict[str, WorkflowStatus | None]) -> dict[str, str]:
    """Workflows that did not complete, with their state."""
    return {wid: (s.state.value if s else "unknown") for wid, s in statuses.items()
            if s is None or s.state != WorkflowState.COMPLETED}
