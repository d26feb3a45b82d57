"""Soak: workflows at a fixed rate for minutes while the orchestrator is killed again and again.

Usage::

    uv run python bench/soak.py [--minutes 2] [--rate 50] [--kill-every 20] [--json]

It starts a nats-server (temporary store), ``natsflow orchestrator`` (with
``--ack-wait``) and a worker serving ``soak.step`` as separate processes, submits 2-4
step DAGs at ``--rate`` per second (half through the NATS API, retried until answered,
half fire-and-forget on the submit subject), SIGKILLs the orchestrator every
``--kill-every`` seconds and starts it again at once. Then it waits for the work to
drain and checks every submitted workflow with ``natsflow.promises`` (promises 1-3).

Exit status 1 if any workflow has no terminal state or any promise is broken. Reported:
kills, task executions per idempotency key above 1 (duplicates seen by the worker),
orchestrator RSS over time, submit -> terminal latency p50/p99. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _procs import Service, rss_kib
from _serve import SOAK_TASK
from nats.aio.msg import Msg
from rich.console import Console

from contracts.errors import Unavailable
from contracts.models import EVENT_TERMINAL, Event
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from natsflow.promises import check_all
from transport.connect import NatsSettings, connect

log = Console(stderr=True, highlight=False)

#: The least time a (re)started orchestrator serves before the kill loop may kill it.
MIN_LIFE_S = 0.5

try:  # psutil is optional; /proc does the same on Linux
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=2.0, help="How long to submit.")
    p.add_argument("--rate", type=float, default=50.0, help="Workflows submitted per second.")
    p.add_argument("--kill-every", type=float, default=20.0,
                   help="Seconds between SIGKILLs of the orchestrator (0: never); a restarted "
                        "one serves at least 0.5 s (answers a ping) before the next.")
    p.add_argument("--ack-wait", type=float, default=5.0,
                   help="The orchestrator's --ack-wait: how long a killed one's work waits.")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="Seconds between orchestrator RSS samples.")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="Longest wait for the work to drain after the last submit.")
    p.add_argument("--seed", type=int, default=1, help="Seed of the workflow shapes.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON only.")
    return p.parse_args(argv)


def soak_config(i: int, rng: random.Random) -> dict[str, Any]:
    """A 2-4 step DAG of ``soak.step``: a chain, a fan-in or a diamond."""
    nap = {"sleep": 0.05} if rng.random() < 0.2 else {}
    shape = rng.choice(["chain", "fan-in", "diamond"])
    if shape == "chain":
        steps = [{"id": "a", "task": SOAK_TASK, "input": {"n": i, **nap}},
                 {"id": "b", "task": SOAK_TASK, "depends_on": ["a"]}]
    elif shape == "fan-in":
        steps = [{"id": "a", "task": SOAK_TASK, "input": nap}, {"id": "b", "task": SOAK_TASK},
                 {"id": "c", "task": SOAK_TASK, "depends_on": ["a", "b"]}]
    else:
        steps = [{"id": "a", "task": SOAK_TASK},
                 {"id": "b", "task": SOAK_TASK, "depends_on": ["a"], "input": nap},
                 {"id": "c", "task": SOAK_TASK, "depends_on": ["a"]},
                 {"id": "d", "task": SOAK_TASK, "depends_on": ["b", "c"]}]
    return {"name": f"soak-{shape}", "id": f"soak-{i}", "steps": steps}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _rss_kib(pid: int) -> int:
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    return rss_kib(pid)


class Orchestrator:
    """``natsflow orchestrator`` as a child process, killed and restarted on demand."""

    def __init__(self, env: dict[str, str], ack_wait: float, log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.argv = [sys.executable, "-m", "natsflow.cli", "orchestrator",
                     "--ack-wait", str(ack_wait)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.lives += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart_if_dead(self) -> bool:
        if self.proc is not None and self.proc.poll() is None:
            return False
        self.start()
        return True


class Soak:
    """One soak run: server, services, load, kills, samples, and the final check."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log")
        self.settings = NatsSettings(servers=[self.server.url],
                                     prefix="soak" + uuid.uuid4().hex[:6])
        self.ledger = workdir / "executions.txt"
        env = {"NATS_URL": self.server.url, "NATSFLOW_PREFIX": self.settings.prefix}
        self.orch = Orchestrator(env, args.ack_wait, workdir / "orchestrator.log")
        self.worker = Service("soak-worker", {**env, "SOAK_LEDGER": str(self.ledger)},
                              workdir / "worker.log")
        self.submitted_at: dict[str, float] = {}
        self.ended_at: dict[str, float] = {}
        self.kills = 0
        self.rss: list[dict[str, Any]] = []
        self.api_retries = 0

    async def run(self) -> dict[str, Any]:
        """The whole run; every process is stopped whatever happens."""
        self.server.start()
        try:
            self.orch.start()
            self.worker.start()
            nc = await connect(self.settings, name="soak")
            try:
                return await self._run(NatsflowClient(nc, self.settings.subjects, timeout=3.0))
            finally:
                await nc.drain()
        finally:
            self.orch.kill()
            self.worker.stop()
            self.server.stop()

    async def _wait_ready(self, client: NatsflowClient) -> None:
        deadline = time.monotonic() + 60
        while not await client.ping():
            if time.monotonic() > deadline:
                raise RuntimeError("the orchestrator did not come up; see orchestrator.log")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the worker declares its consumer

    async def _run(self, client: NatsflowClient) -> dict[str, Any]:
        a = self.args
        await self._wait_ready(client)
        t0 = time.monotonic()

        async def on_event(msg: Msg) -> None:
            event = Event.model_validate_json(msg.data)
            if event.type in EVENT_TERMINAL:
                self.ended_at.setdefault(event.workflow_id, time.monotonic())

        sub = await client.nc.subscribe(client.subjects.events_of("*", "workflow.*"),
                                        cb=on_event, pending_msgs_limit=1_000_000)
        background = [asyncio.create_task(self._kill_loop(client)),
                      asyncio.create_task(self._sample_loop(t0))]
        try:
            await self._submit(client)
            submitted = time.monotonic()
            log.print(f"submitted {len(self.submitted_at)} workflows in "
                      f"{submitted - t0:.0f}s; {self.kills} kills so far; draining...")
            background[0].cancel()  # no kills while draining
            await self._drain(a.drain_timeout)
            drained = time.monotonic()
            log.print(f"drained in {drained - submitted:.1f}s; checking every workflow...")
            checked, violations = await check_all(client, list(self.submitted_at))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await sub.unsubscribe()
        return self._report(checked, [str(v) for v in violations], t0, submitted, drained)

    async def _submit(self, client: NatsflowClient) -> None:
        a = self.args
        rng = random.Random(a.seed)
        total = int(a.minutes * 60 * a.rate)
        start = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = start + i / a.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            config = soak_config(i, rng)
            self.submitted_at[config["id"]] = time.monotonic()
            if i % 2:
                await client.submit(config)
            else:
                task = asyncio.create_task(self._create(client, config))
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    async def _create(self, client: NatsflowClient, config: dict[str, Any]) -> None:
        while True:
            try:
                await client.create(config)
                return
            except Unavailable:  # the orchestrator is down: a client retries the same id
                self.api_retries += 1
                await asyncio.sleep(0.2)

    async def _kill_loop(self, client: NatsflowClient) -> None:
        """SIGKILL the orchestrator every ``--kill-every`` seconds, restarting it at once.

        A life is only cut short once it has served: the orchestrator is killed when it is
        due *and* answered a ping at least ``MIN_LIFE_S`` before. On a loaded machine its
        start-up can take longer than ``--kill-every``; a fixed cadence then kills every life
        before it is ready and the run never drains (seen in CI: the 180 s timeout).
        """
        every = self.args.kill_every
        next_kill = time.monotonic() + every if every > 0 else float("inf")
        served_at: float | None = None
        while True:
            await asyncio.sleep(0.1)
            if served_at is None and every > 0 and await client.ping(timeout=0.5):
                served_at = time.monotonic()
            now = time.monotonic()
            if served_at is not None and now >= max(next_kill, served_at + MIN_LIFE_S):
                self.orch.kill()
                self.kills += 1
                served_at = None
                next_kill = max(next_kill + every, now)
            self.orch.restart_if_dead()  # at once, as a supervisor would

    async def _sample_loop(self, t0: float) -> None:
        while True:
            proc = self.orch.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(Exception):  # it may die between poll and read
                    self.rss.append({"t_s": round(time.monotonic() - t0, 1),
                                     "life": self.orch.lives,
                                     "rss_kib": _rss_kib(proc.pid)})
            await asyncio.sleep(self.args.sample_every)

    async def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while set(self.submitted_at) - set(self.ended_at) and time.monotonic() < deadline:
            self.orch.restart_if_dead()
            await asyncio.sleep(0.2)

    def _report(self, checked: int, violations: list[str], t0: float, submitted: float,
                drained: float) -> dict[str, Any]:
        executions = Counter(self.ledger.read_text().split()) if self.ledger.exists() else {}
        dupes = {k: n for k, n in executions.items() if n > 1}
        latencies = [(self.ended_at[w] - t) * 1000 for w, t in self.submitted_at.items()
                     if w in self.ended_at]
        open_ = sorted(set(self.submitted_at) - set(self.ended_at))
        rss = [s["rss_kib"] for s in self.rss]
        return {
            "settings": {k: v for k, v in vars(self.args).items() if k != "json"},
            "submitted": len(self.submitted_at),
            "submit_seconds": round(submitted - t0, 1),
            "drain_seconds": round(drained - submitted, 1),
            "terminal_seen": len(self.submitted_at) - len(open_),
            "not_terminal": open_[:20],
            "checked": checked,
            "violations": violations[:50],
            "violation_count": len(violations),
            "kills": self.kills,
            "orchestrator_lives": self.orch.lives,
            "unexpected_deaths": self.orch.lives - 1 - self.kills,
            "api_retries": self.api_retries,
            "task_executions": sum(executions.values()),
            "idempotency_keys": len(executions),
            "duplicate_keys": len(dupes),
            "max_executions_per_key": max(executions.values(), default=0),
            "latency_ms": {"p50": round(percentile(latencies, 0.50), 1),
                           "p99": round(percentile(latencies, 0.99), 1),
                           "max": round(max(latencies, default=0.0), 1)},
            "rss_kib": {"min": min(rss, default=0), "max": max(rss, default=0),
                        "samples": self.rss},
            "rss_source": "psutil" if psutil is not None else "/proc",
        }


def show(report: dict[str, Any]) -> None:
    """The report for people, on stderr."""
    lat, rss = report["latency_ms"], report["rss_kib"]
    log.print(f"submitted {report['submitted']} in {report['submit_seconds']}s, "
              f"drained in {report['drain_seconds']}s, {report['kills']} kills "
              f"({report['orchestrator_lives']} orchestrator lives), "
              f"{report['api_retries']} API retries")
    log.print(f"checked {report['checked']}: {report['violation_count']} violations, "
              f"{len(report['not_terminal'])} without a terminal event")
    log.print(f"task executions {report['task_executions']} over "
              f"{report['idempotency_keys']} idempotency keys: {report['duplicate_keys']} "
              f"keys ran more than once (max {report['max_executions_per_key']})")
    log.print(f"submit -> terminal latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, "
              f"max {lat['max']:.0f} ms")
    trail = ", ".join(f"{s['t_s']:.0f}s:{s['rss_kib'] / 1024:.0f}" for s in rss["samples"])
    log.print(f"orchestrator RSS MiB ({report['rss_source']}) {trail}")
    for v in report["violations"][:20]:
        log.print(f"[red]{v}[/]", markup=True)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every workflow ended and kept every promise."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-soak-") as tmp:
        report = asyncio.run(Soak(args, Path(tmp)).run())
        ok = report["violation_count"] == 0 and not report["not_terminal"] and (
            report["checked"] == report["submitted"])
        if not ok:
            for name in ("orchestrator.log", "worker.log"):
                path = Path(tmp) / name
                if path.exists():
                    log.print(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
    if args.json:
        print(json.dumps(report, indent=2))
    show(report)
    log.print("[green]OK[/]" if ok else "[red]FAILED[/]", markup=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
