"""Many waiting workflows (issue 17): N workflows parked in a ``wait`` (or ``sleep``) step.

Usage::

    uv run python bench/parked.py                          # 100,000 parked on a signal
    uv run python bench/parked.py --workflows 20000 --kind sleep --json
    uv run python bench/parked.py --smoke                  # 200 workflows, a few seconds
    ROOT=/tmp/p-main uv run python bench/parked.py ...     # the orchestrator of another tree

``ROOT=/path/to/another/checkout`` runs that tree's orchestrator (its code on
``PYTHONPATH``, started by its own ``bench/_serve.py``, as bench/paired.py does), measured
by this tree's client: run it and the plain command one after the other, alternating,
for a paired A/B.

It starts a nats-server (temporary store) and the orchestrator as separate processes (as
bench/throughput.py does; no worker: neither step kind needs one), creates N one-step
workflows through the client's ``create`` (``--concurrency`` calls in flight) whose step
waits for the signal ``go`` (or, ``--kind sleep``, sleeps ``--sleep`` seconds), and waits
for each one's ``step.waiting`` event; a sample of them is then read back with ``get``
(their status must show the step waiting). Reported: the orchestrator's RSS at every
10% of N parked and of N released, what JetStream stores per parked workflow (every
stream's bytes, before and after, per stream and in all, and the store directory's size
on disk), and how fast all of them are released: each signalled through the client's
``signal`` (a ``sleep`` is stopped with ``stop``: no signal ends it), timed from the
first call to the last terminal event. Exit status 0 when every workflow parked and then
ended as it should. See bench/README.md, "Many waiting workflows (issue 17)".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _load import PhaseResult, Snapshot, Tracker, run_calls, run_load, settled
from _procs import _SERVE, Service, cpu_seconds, rss_kib
from _report import FLAT_RSS_TOLERANCE
from _sync import SYNC_CONFIG
from rich.console import Console
from rich.table import Table

from contracts.models import EventType, StepState, WorkflowConfig, WorkflowState
from natsflow._gc import tune_gc
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect

log = Console(stderr=True, highlight=False)

#: The signal every parked workflow waits for.
SIGNAL = "go"
#: Issue 17's targets for many waiting workflows.
TARGET_BYTES_PER_WORKFLOW = 4096
TARGET_SIGNAL_WPS = 2000.0
#: Workflows read back with ``get`` to see that their status shows the wait.
CHECKED = 200
SMOKE_WORKFLOWS = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workflows", type=int, default=100_000, help="Workflows parked.")
    p.add_argument("--kind", choices=("wait", "sleep"), default="wait",
                   help="wait: for the signal 'go', then signalled; sleep: --sleep seconds, "
                   "then stopped.")
    p.add_argument("--sleep", type=float, default=86_400.0,
                   help="With --kind sleep: how long each sleeps (longer than the run).")
    p.add_argument("--hold", type=float, default=0.0,
                   help="Seconds to leave them parked before releasing them (a record "
                   "stored over 100 s ago is released by a slower path: bench/README.md).")
    p.add_argument("--concurrency", type=int, default=64,
                   help="create/signal/stop calls in flight at once.")
    p.add_argument("--sync", choices=tuple(SYNC_CONFIG), default="default",
                   help="The server's sync_interval (bench/_sync.py).")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="Run the orchestrator under cProfile, stats in DIR (slow!).")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="Longest either phase may take, seconds.")
    p.add_argument("--smoke", action="store_true",
                   help=f"{SMOKE_WORKFLOWS} workflows: a few seconds, for the tests.")
    p.add_argument("--json", action="store_true", help="Print the results as JSON only.")
    args = p.parse_args(argv)
    if args.smoke:
        args.workflows = SMOKE_WORKFLOWS
    if args.workflows < 10 or args.concurrency < 1 or args.sleep <= 0 or args.hold < 0:
        p.error("--workflows must be at least 10, --concurrency and --sleep positive, "
                "--hold not negative")
    return args


def parked_config(kind: str, sleep: float) -> WorkflowConfig:
    """One step that parks the workflow: a wait for :data:`SIGNAL`, or a long sleep."""
    step: dict[str, Any] = ({"id": "park", "kind": "wait", "signal": SIGNAL} if kind == "wait"
                            else {"id": "park", "kind": "sleep", "duration": sleep})
    return WorkflowConfig.model_validate({"name": f"bench-parked-{kind}", "steps": [step]})


def store_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (the server's store directory)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:  # a block the server removed meanwhile
                continue
    return total


def storage(before: Snapshot, after: Snapshot, n: int) -> dict[str, Any]:
    """Per stream and in all: bytes and messages more in ``after``, and per workflow."""
    streams: dict[str, Any] = {}
    for name in sorted(after):
        msgs0, _, bytes0 = before.get(name, (0, 0, 0))
        msgs1, _, bytes1 = after[name]
        if (msgs1, bytes1) == (msgs0, bytes0):
            continue
        streams[name] = {"bytes": bytes1 - bytes0, "messages": msgs1 - msgs0,
                         "bytes_per_workflow": round((bytes1 - bytes0) / n, 1),
                         "messages_per_workflow": round((msgs1 - msgs0) / n, 3)}
    total = sum(s["bytes"] for s in streams.values())
    return {"bytes": total, "bytes_per_workflow": round(total / n, 1), "streams": streams}


class ParkedBench:
    """One run: the server, the orchestrator, the client and what was measured."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log",
                                   config=SYNC_CONFIG[args.sync])
        self.settings = NatsSettings(servers=[self.server.url],
                                     prefix="parked" + uuid.uuid4().hex[:6])
        self.base = parked_config(args.kind, args.sleep)
        self.report: dict[str, Any] = {"settings": {
            "workflows": args.workflows, "kind": args.kind, "concurrency": args.concurrency,
            "sleep_s": args.sleep if args.kind == "sleep" else None, "hold_s": args.hold,
            "sync_interval": args.sync, "cpus": os.cpu_count(),
            "root": os.environ.get("ROOT") or None,
            "python": platform.python_version()}}

    async def run(self) -> dict[str, Any]:
        """Both phases; the server and the orchestrator are always stopped."""
        env = {"NATS_URL": self.server.url, "NATSFLOW_PREFIX": self.settings.prefix}
        profile = self.args.profile / "orchestrator.prof" if self.args.profile else None
        script = _SERVE
        if root := os.environ.get("ROOT"):  # the other tree's code, by its own _serve.py
            env["PYTHONPATH"] = root
            script = Path(root) / "bench" / "_serve.py"
        self.server.start()
        self.orch = Service("orchestrator", env, self.workdir / "orchestrator.log", profile,
                            script=script)
        try:
            self.orch.start()
            nc = await connect(self.settings, name="bench-parked")
            try:
                self.client = NatsflowClient(nc, self.settings.subjects, timeout=60.0)
                await self._phases(nc)
            finally:
                await nc.drain()
        finally:
            self.orch.stop()
            self.server.stop()
        return self.report

    def _trackers(self) -> tuple[Tracker, Tracker]:
        """One that sees a workflow park, one that sees it end as it should."""
        nc, subjects = self.client.nc, self.settings.subjects
        parked = Tracker(nc, subjects, events=(EventType.STEP_WAITING,
                                               EventType.WORKFLOW_FAILED),
                         success=EventType.STEP_WAITING)
        ended = Tracker(nc, subjects, events=(EventType.WORKFLOW_COMPLETED,
                                              EventType.WORKFLOW_FAILED,
                                              EventType.WORKFLOW_STOPPED),
                        success=(EventType.WORKFLOW_COMPLETED if self.args.kind == "wait"
                                 else EventType.WORKFLOW_STOPPED))
        return parked, ended

    def _release(self) -> Callable[[str], Awaitable[Any]]:
        if self.args.kind == "wait":
            return lambda wid: self.client.signal(wid, SIGNAL, {"by": "bench"})
        return self.client.stop

    async def _phases(self, nc: Any) -> None:
        a, report = self.args, self.report
        deadline = time.monotonic() + 60
        while not await self.client.ping():
            if time.monotonic() > deadline or not self.orch.alive():
                raise RuntimeError("the orchestrator did not come up:\n" + self._log_tail())
            await asyncio.sleep(0.2)
        assert self.server.proc is not None
        log.print(f"orchestrator pid {self.orch.pid}, nats-server pid {self.server.proc.pid}")
        parked, ended = self._trackers()
        await parked.start()
        await ended.start()
        # A few through the whole path first: consumers made, code paths warm.
        warm = await run_load(self.client, parked, name="warmup", base=self.base, n=10,
                              concurrency=4, via="create", timeout=60)
        warm_end = await run_calls(ended, name="warmup-release", ids=warm.ids,
                                   call=self._release(), concurrency=4, timeout=60)
        if warm.completed < 10 or warm_end.completed < 10 or warm_end.failed:
            raise RuntimeError("the warm-up did not finish:\n" + self._log_tail())

        before = await settled(nc)
        disk0 = store_bytes(self.workdir / "nats")
        rss0 = rss_kib(self.orch.pid)
        log.print(f"parking {a.workflows:,} workflows ({a.kind})...")
        park, park_rss = await self._sampled(parked, lambda: run_load(
            self.client, parked, name="park", base=self.base, n=a.workflows,
            concurrency=a.concurrency, via="create", timeout=a.timeout))
        after = await settled(nc, timeout=120)
        report["park"] = self._phase_row(park, [(0, rss0), *park_rss])
        report["checked_waiting"] = await self._check_waiting(park.ids)
        report["storage"] = storage(before, after, a.workflows)
        disk1 = store_bytes(self.workdir / "nats")
        report["storage"]["store_dir_bytes_per_workflow"] = round((disk1 - disk0)
                                                                  / a.workflows, 1)
        report["nats_rss_kib_parked"] = rss_kib(self.server.proc.pid)
        log.print(f"  parked {park.completed:,}/{park.workflows:,} in {park.elapsed:.1f}s; "
                  f"{report['storage']['bytes_per_workflow']:,.0f} B/wf in streams")
        if park.completed < park.workflows:
            log.print("[red]not every workflow parked; not releasing[/]\n" + self._log_tail(),
                      markup=True)
            return

        if a.hold:
            log.print(f"holding them parked for {a.hold:.0f}s...")
            await asyncio.sleep(a.hold)
        verb = "signalling" if a.kind == "wait" else "stopping"
        log.print(f"{verb} {a.workflows:,} workflows...")
        release, release_rss = await self._sampled(ended, lambda: run_calls(
            ended, name="release", ids=park.ids, call=self._release(),
            concurrency=a.concurrency, timeout=a.timeout))
        report["release"] = self._phase_row(release, release_rss)
        report["release"]["how"] = "signal" if a.kind == "wait" else "stop"
        end = await settled(nc, timeout=120)
        report["storage_after_release"] = storage(before, end, a.workflows)
        log.print(f"  released {release.completed:,}/{release.workflows:,} in "
                  f"{release.elapsed:.1f}s: {release.workflows_per_s:,.0f} wf/s")
        await parked.stop()
        await ended.stop()

    async def _sampled(self, tracker: Tracker, phase: Callable[[], Awaitable[PhaseResult]]
                       ) -> tuple[PhaseResult, list[tuple[int, int]]]:
        """Run ``phase``, reading the orchestrator's RSS and CPU (and the server's CPU)
        as every tenth of its workflows reaches ``tracker``'s event."""
        n, base = self.args.workflows, tracker.finished
        samples: list[tuple[int, int]] = []
        assert self.server.proc is not None
        cpu0 = (cpu_seconds(self.orch.pid), cpu_seconds(self.server.proc.pid))

        async def sample() -> None:
            # One sample whenever a tenth more has arrived (events come in bursts).
            mark = max(1, n // 10)
            while mark <= n:
                await asyncio.sleep(0.02)
                done = tracker.finished - base
                if done >= mark:
                    samples.append((done, rss_kib(self.orch.pid)))
                    mark = (done // max(1, n // 10) + 1) * max(1, n // 10)

        sampler = asyncio.create_task(sample())
        try:
            result = await phase()
            with contextlib.suppress(TimeoutError):  # the last tenth's sample
                await asyncio.wait_for(asyncio.shield(sampler), 1.0)
        finally:
            sampler.cancel()
        result.cpu = {"orchestrator": cpu_seconds(self.orch.pid) - cpu0[0],
                      "nats": cpu_seconds(self.server.proc.pid) - cpu0[1]}
        return result, samples

    def _phase_row(self, phase: PhaseResult, rss: list[tuple[int, int]]) -> dict[str, Any]:
        return {
            "workflows": phase.workflows, "done": phase.completed, "failed": phase.failed,
            "elapsed_s": round(phase.elapsed, 3), "calls_s": round(phase.submit_elapsed, 3),
            "workflows_per_s": round(phase.workflows_per_s, 1),
            "p50_ms": round(phase.latency_ms(50), 2), "p99_ms": round(phase.latency_ms(99), 2),
            "cpu_ms_per_workflow": {k: round(1000 * v / phase.completed, 3)
                                    if phase.completed else 0.0 for k, v in phase.cpu.items()},
            "orchestrator_rss_kib": [{"done": d, "rss_kib": kib} for d, kib in rss]}

    async def _check_waiting(self, ids: list[str]) -> dict[str, int]:
        """Read back evenly spaced workflows: running, their one step waiting."""
        picked = ids[:: max(1, len(ids) // CHECKED)][:CHECKED - 1] + ids[-1:]
        waiting = 0
        for wid in picked:
            status = (await self.client.get(wid)).status
            if (status is not None and status.state == WorkflowState.RUNNING
                    and status.steps[0].state == StepState.WAITING):
                waiting += 1
        return {"checked": len(picked), "waiting": waiting}

    def _log_tail(self) -> str:
        path = self.workdir / "orchestrator.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-15:]) \
            if path.exists() else ""


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's targets for many waiting workflows, measured in this run."""
    out: dict[str, Any] = {}
    rss = [s["rss_kib"] for s in report["park"]["orchestrator_rss_kib"]]
    # From the first tenth on: start-up and the first records warm caches and buffers.
    first, last = rss[1], rss[-1]
    out["orchestrator RSS flat while parking (10% -> 100%)"] = {
        "measured": f"{first} -> {last} KiB (max {max(rss[1:])})",
        "met": max(rss[1:]) <= first * (1 + FLAT_RSS_TOLERANCE)}
    per = report["storage"]["bytes_per_workflow"]
    out[f"NATS storage per parked workflow <= {TARGET_BYTES_PER_WORKFLOW} B"] = {
        "measured": per, "met": per <= TARGET_BYTES_PER_WORKFLOW}
    if "release" in report:
        wps = report["release"]["workflows_per_s"]
        out[f"{report['release']['how']} all >= {TARGET_SIGNAL_WPS:.0f} wf/s"] = {
            "measured": wps, "met": wps >= TARGET_SIGNAL_WPS
            and report["release"]["done"] == report["release"]["workflows"]}
    return out


def show(report: dict[str, Any], console: Console) -> None:
    """Draw the tables."""
    phases = Table(title=f"{report['settings']['workflows']:,} parked workflows "
                         f"({report['settings']['kind']})")
    phases.add_column("phase")
    for col in ("done", "s", "wf/s", "p50 ms", "p99 ms", "orch ms/wf", "nats ms/wf"):
        phases.add_column(col, justify="right")
    for name in ("park", "release"):
        if name not in report:
            continue
        ph, cpu = report[name], report[name]["cpu_ms_per_workflow"]
        phases.add_row(name if name == "park" else f"release ({ph['how']})",
                       f"{ph['done']:,}/{ph['workflows']:,}", f"{ph['elapsed_s']:.1f}",
                       f"{ph['workflows_per_s']:,.0f}", f"{ph['p50_ms']:.1f}",
                       f"{ph['p99_ms']:.1f}", f"{cpu['orchestrator']:.3f}",
                       f"{cpu['nats']:.3f}")
    console.print(phases)
    check = report["checked_waiting"]
    console.print(f"read back with get: {check['waiting']}/{check['checked']} waiting")

    st = report["storage"]
    table = Table(title=f"JetStream storage per parked workflow: {st['bytes_per_workflow']:,.0f}"
                        f" B in streams, {st['store_dir_bytes_per_workflow']:,.0f} B on disk")
    for col in ("stream", "bytes/wf", "msgs/wf", "after release, bytes/wf"):
        table.add_column(col, justify="left" if col == "stream" else "right")
    later = report.get("storage_after_release", {}).get("streams", {})
    for name in sorted(set(st["streams"]) | set(later)):
        s, t = st["streams"].get(name, {}), later.get(name, {})
        table.add_row(name, f"{s.get('bytes_per_workflow', 0):,.1f}",
                      f"{s.get('messages_per_workflow', 0):g}",
                      f"{t.get('bytes_per_workflow', 0):,.1f}")
    console.print(table)

    mem = Table(title="Orchestrator RSS")
    mem.add_column("phase")
    mem.add_column("done", justify="right")
    mem.add_column("RSS MiB", justify="right")
    for name in ("park", "release"):
        for s in report.get(name, {}).get("orchestrator_rss_kib", []):
            mem.add_row(name, f"{s['done']:,}", f"{s['rss_kib'] / 1024:.1f}")
    console.print(mem)

    tt = Table(title="Targets (issue 17)")
    for col in ("target", "measured", "met"):
        tt.add_column(col)
    for name, t in report["targets"].items():
        tt.add_row(name, str(t["measured"]), "yes" if t["met"] else "NO")
    console.print(tt)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 when every workflow parked and then ended as it should."""
    args = parse_args(argv)
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    tune_gc()  # the load generator shares the machine: tuned like the services
    with tempfile.TemporaryDirectory(prefix="natsflow-parked-") as tmp:
        report = asyncio.run(ParkedBench(args, Path(tmp)).run())
    report["targets"] = targets(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report, Console() if sys.stdout.isatty() else Console(width=110))
    n = args.workflows
    ok = (report["park"]["done"] == n and report["checked_waiting"]["waiting"]
          == report["checked_waiting"]["checked"]
          and report.get("release", {}).get("done") == n
          and not report["release"]["failed"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
