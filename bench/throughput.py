"""natsflow throughput and latency benchmark, in one run, on this machine.

Usage::

    uv run python bench/throughput.py [--workflows N] [--steps 1,10] [--concurrency C]
                                      [--sequential K] [--memory-run N] [--json]
                                      [--sync always [--rounds R]]

It starts a nats-server (temporary store), measures the raw JetStream floor, starts the
orchestrator and a no-op worker as separate processes, drives them from this process
through the NATS API, and prints every figure with its ratio to the floor. Everything
runs on loopback, every wait is bounded, and it stops by itself. See bench/README.md.

With ``--sync always`` it runs the whole benchmark twice per round, once on a server
with the default storage (fsync every two minutes) and once on one started with
``sync_interval: always`` (every acknowledged write on disk), rounds interleaved, and
prints both with the durable mode's ratios to the default (bench/_sync.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from _load import (
    PhaseResult,
    Tracker,
    chain_config,
    raw_floor,
    raw_rtt,
    run_load,
    run_sequential,
    stored_messages,
)
from _procs import Service, cpu_seconds, rss_kib
from _report import Report, phase_row
from _serve import NOOP_TASK
from _sync import SYNC_CONFIG, SyncComparison
from rich.console import Console

from contracts.models import WorkflowConfig
from natsflow._gc import tune_gc
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect

log = Console(stderr=True, highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workflows", type=int, default=5000,
                   help="One-step workflows per load phase (N-step phases run N/steps).")
    p.add_argument("--steps", default="1,10", help="Chain lengths to run, comma-separated.")
    p.add_argument("--concurrency", type=int, default=64,
                   help="Create/submit calls in flight at once during load phases.")
    p.add_argument("--sequential", type=int, default=200,
                   help="Workflows run one at a time for the low-load latency phases.")
    p.add_argument("--floor-seconds", type=float, default=3.0,
                   help="How long the raw JetStream floor is measured.")
    p.add_argument("--memory-run", type=int, default=0, metavar="N",
                   help="Then push N one-step workflows in waves, sampling orchestrator RSS.")
    p.add_argument("--wave", type=int, default=10_000, help="Workflows per memory-run wave.")
    p.add_argument("--memory-via", choices=("submit", "create"), default="submit",
                   help="How the memory run submits its workflows.")
    p.add_argument("--orchestrators", type=int, default=1,
                   help="Orchestrator processes (replicas sharing the engine consumer).")
    p.add_argument("--worker", choices=("sdk", "demo", "raw"), default="sdk",
                   help="sdk: natsflow.worker serving bench.noop; demo: natsflow.demo:worker "
                   "(demo.noop); raw: a bare nats-py worker.")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="Run the services under cProfile, stats written to DIR (slow!).")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="Longest any one phase may take, seconds.")
    p.add_argument("--sync", choices=tuple(SYNC_CONFIG), default="default",
                   help="always: run every phase on the default server and on one with "
                   "sync_interval: always, and print both with their ratios.")
    p.add_argument("--rounds", type=int, default=1,
                   help="With --sync always: interleaved rounds of both modes (medians).")
    p.add_argument("--json", action="store_true", help="Print the results as JSON only.")
    args = p.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if (args.workflows < 1 or args.concurrency < 1 or args.orchestrators < 1
            or args.rounds < 1 or any(s < 1 for s in args.steps)):
        p.error("--workflows, --concurrency, --orchestrators, --rounds and --steps must be "
                "positive")
    return args


class Bench:
    """One benchmark run: the server, the services, the client and the results."""

    def __init__(self, args: argparse.Namespace, workdir: Path, *, sync: str = "default"
                 ) -> None:
        self.args = args
        self.workdir = workdir
        self.server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log",
                                   config=SYNC_CONFIG[sync])
        self.settings = NatsSettings(servers=[self.server.url],
                                     prefix="bench" + uuid.uuid4().hex[:6])
        self.task = "demo.noop" if args.worker == "demo" else NOOP_TASK
        self.services: dict[str, Service] = {}
        self.report = Report(settings={
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        } | {"cpus": os.cpu_count(), "python": platform.python_version(),
             "sync_interval": sync})

    def _service(self, name: str, role: str) -> Service:
        env = {"NATS_URL": self.server.url, "NATSFLOW_PREFIX": self.settings.prefix}
        profile = self.args.profile / f"{name}.prof" if self.args.profile else None
        svc = Service(role, env, self.workdir / f"{name}.log", profile).start()
        self.services[name] = svc
        return svc

    def _cpu(self) -> dict[str, float]:
        out = {"orchestrator": 0.0}
        for name, svc in self.services.items():
            # Every orchestrator replica counts as "orchestrator".
            key = "orchestrator" if name.startswith("orchestrator") else name
            out[key] = out.get(key, 0.0) + cpu_seconds(svc.pid)
        if self.server.proc is not None:
            out["nats"] = cpu_seconds(self.server.proc.pid)
        out["bench"] = time.process_time()
        return out

    async def _phase(self, make: Callable[[], Awaitable[PhaseResult]]) -> PhaseResult:
        cpu0, stored0 = self._cpu(), await stored_messages(self.nc, self.settings.subjects)
        result = await make()
        cpu1, stored1 = self._cpu(), await stored_messages(self.nc, self.settings.subjects)
        result.cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
        result.stored_messages = stored1 - stored0
        row = phase_row(result, floor=self.report.floor_msgs_per_s)
        self.report.phases.append(row)
        log.print(f"  {row['name']}: {row['completed']}/{row['workflows']} in "
                  f"{row['elapsed_s']:.1f}s, {row['workflows_per_s']:,.0f} wf/s, "
                  f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
        if result.completed < result.workflows:
            self._show_logs()
        return result

    def _show_logs(self) -> None:
        for name in self.services:
            path = self.workdir / f"{name}.log"
            tail = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
            log.print(f"[red]{name} log (last lines):[/]\n" + "\n".join(tail), markup=True)

    async def run(self) -> Report:
        """Every phase, in order; the server and services are always stopped."""
        a = self.args
        self.server.start()
        try:
            self.nc = await connect(self.settings, name="bench")
            try:
                await self._run_phases(a)
            finally:
                await self.nc.drain()
        finally:
            for svc in reversed(self.services.values()):
                svc.stop()
            self.server.stop()
        return self.report

    async def _run_phases(self, a: argparse.Namespace) -> None:
        log.print(f"raw JetStream floor ({a.floor_seconds:.0f}s)...")
        self.report.floor_msgs_per_s = await raw_floor(self.nc, seconds=a.floor_seconds)
        self.report.floor_rtt_ms = await raw_rtt(self.nc) * 1000
        log.print(f"  {self.report.floor_msgs_per_s:,.0f} msgs/s, "
                  f"sync publish p50 {self.report.floor_rtt_ms:.3f} ms")

        orchestrator = self._service("orchestrator", "orchestrator")
        for i in range(2, a.orchestrators + 1):
            self._service(f"orchestrator-{i}", "orchestrator")
        self._service("worker", {"sdk": "worker", "demo": "demo-worker", "raw": "raw-worker"}
                      [a.worker])
        client = NatsflowClient(self.nc, self.settings.subjects, timeout=30.0)
        await self._wait_ready(client)
        log.print("services up: " + ", ".join(
            f"{name} pid {svc.pid}" for name, svc in self.services.items()))
        tracker = Tracker(self.nc, self.settings.subjects)
        await tracker.start()

        one = chain_config(1, self.task)
        warm = await run_load(client, tracker, name="warmup", base=one, n=50, concurrency=8,
                              via="create", timeout=60)
        if warm.completed < warm.workflows:
            self._show_logs()
            raise RuntimeError(f"warm-up finished {warm.completed}/{warm.workflows} workflows")
        self.report.rss_kib_before = rss_kib(orchestrator.pid)

        for steps in a.steps:
            base = chain_config(steps, self.task)
            n = max(20, a.workflows // steps)
            log.print(f"{steps}-step workflows...")
            await self._phase(partial(
                run_sequential, client, tracker, name=f"{steps}-step sequential (create)",
                base=base, n=a.sequential, via="create", timeout=a.timeout))
            for via in ("create", "submit"):
                await self._phase(partial(
                    run_load, client, tracker, name=f"{steps}-step load ({via})", base=base,
                    n=n, concurrency=a.concurrency, via=via, timeout=a.timeout))
        self.report.rss_kib_after = rss_kib(orchestrator.pid)

        if a.memory_run > 0:
            await self._memory_run(client, tracker, one, orchestrator)
        await tracker.stop()

    async def _wait_ready(self, client: NatsflowClient) -> None:
        deadline = time.monotonic() + 60
        while not await client.ping():
            if time.monotonic() > deadline or not all(s.alive() for s in self.services.values()):
                self._show_logs()
                raise RuntimeError("the orchestrator did not come up")
            await asyncio.sleep(0.2)

    async def _memory_run(self, client: NatsflowClient, tracker: Tracker,
                          base: WorkflowConfig, orchestrator: Service) -> None:
        a = self.args
        log.print(f"memory run: {a.memory_run:,} one-step workflows in waves of {a.wave:,}...")
        finished = 0
        self.report.memory_samples = [(0, rss_kib(orchestrator.pid))]
        while finished < a.memory_run:
            n = min(a.wave, a.memory_run - finished)
            wave = await run_load(client, tracker, name="memory", base=base, n=n,
                                  concurrency=a.concurrency, via=a.memory_via,
                                  timeout=a.timeout)
            finished += wave.completed
            if wave.completed < n:
                self._show_logs()
                log.print(f"[red]memory wave finished {wave.completed}/{n}; stopping[/]")
                break
            await asyncio.sleep(0.5)  # let the last outboxes and acks drain
            kib = rss_kib(orchestrator.pid)
            self.report.memory_samples.append((finished, kib))
            log.print(f"  {finished:,} finished ({wave.workflows_per_s:,.0f} wf/s): "
                      f"RSS {kib / 1024:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every phase finished every workflow."""
    args = parse_args(argv)
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    tune_gc()  # the load generator shares the machine: tuned like the services
    if args.sync != "default":
        return _compare_sync(args)
    with tempfile.TemporaryDirectory(prefix="natsflow-bench-") as tmp:
        report = asyncio.run(Bench(args, Path(tmp)).run())
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        # Piped output gets a fixed width, so the tables do not wrap at 80 columns.
        report.print(Console() if sys.stdout.isatty() else Console(width=110))
    complete = all(ph["completed"] == ph["workflows"] for ph in report.phases)
    return 0 if complete else 1


def _compare_sync(args: argparse.Namespace) -> int:
    """Both storage modes, rounds interleaved (the order flips every round)."""
    comparison = SyncComparison(modes=("default", args.sync))
    for i in range(args.rounds):
        order = comparison.modes if i % 2 == 0 else comparison.modes[::-1]
        for mode in order:
            log.print(f"[bold]round {i + 1}/{args.rounds}: sync_interval {mode}[/]",
                      markup=True)
            with tempfile.TemporaryDirectory(prefix="natsflow-bench-") as tmp:
                comparison.add(mode, asyncio.run(Bench(args, Path(tmp), sync=mode).run()))
    if args.json:
        print(json.dumps(comparison.as_dict(), indent=2))
    else:
        comparison.print(Console() if sys.stdout.isatty() else Console(width=110))
    return 0 if comparison.complete() else 1


if __name__ == "__main__":
    sys.exit(main())
