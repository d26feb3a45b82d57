"""Paired A/B: two deployments on one nats-server, measured at the same time.

Usage::

    uv run python bench/paired.py [--steps 10] [--workflows 150] [--json] A B
    uv run python bench/paired.py --load 2000 [--rounds 6] [--via create] A B
    uv run python bench/paired.py --sync always ...   # on a server that fsyncs every write

``A`` and ``B`` each describe one deployment (an orchestrator and a no-op worker, with
a prefix of their own) as environment settings, e.g.
``NATSFLOW_EVENT_LOOP=asyncio`` against ``NATSFLOW_EVENT_LOOP=uvloop``, or
``ROOT=/path/to/another/checkout`` (that tree's code and ``bench/_serve.py``) against
``""`` (this tree as it is). Workflows run one at a time, alternating between the two
(the order flips every round), so both see the machine in the same state: on these
shared VMs the speed of the machine moves by up to 40% from minute to minute, which
drowns a few-percent difference between two runs made one after the other.

It prints each side's p50/p90 latency (create sent to ``workflow.completed`` seen), the
medians of each step's two halves taken from the events' own times (dispatched to
started: the task's way to the worker; started to succeeded: the worker's work and the
result's way back), and the median of the paired differences B - A with how many
pairs B won.

With ``--load N`` it compares CPU instead of latency: in each of ``--rounds`` rounds
both deployments take N one-step workflows at once (``--concurrency`` calls in flight
each), and each orchestrator's CPU time per workflow is read from ``/proc``. It prints
each side's median ms/wf, and the median ratio B / A of the rounds with how many
rounds B used less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from _load import Tracker, chain_config, run_load
from _procs import _SERVE, Service, cpu_seconds
from _serve import NOOP_TASK
from _sync import SYNC_CONFIG

from contracts.models import WorkflowConfig
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="Side A's environment, e.g. 'NATSFLOW_EVENT_LOOP=asyncio'.")
    p.add_argument("b", help="Side B's environment ('' for this tree as it is).")
    p.add_argument("--steps", type=int, default=10, help="Steps per workflow (a chain).")
    p.add_argument("--workflows", type=int, default=150, help="Counted workflows per side.")
    p.add_argument("--warmup", type=int, default=10,
                   help="Rounds run first and not counted (both sides warm up).")
    p.add_argument("--load", type=int, default=0,
                   help="Compare orchestrator CPU per workflow under load: one-step "
                        "workflows per side per round (0: compare latency).")
    p.add_argument("--rounds", type=int, default=6, help="Load rounds (with --load).")
    p.add_argument("--concurrency", type=int, default=64,
                   help="Calls in flight per side (with --load).")
    p.add_argument("--via", choices=("create", "submit"), default="create",
                   help="How load is submitted (with --load).")
    p.add_argument("--sync", choices=tuple(SYNC_CONFIG), default="default",
                   help="The server's sync_interval (always: every acknowledged write "
                        "fsynced, the durable mode of issue 17).")
    p.add_argument("--json", action="store_true", help="Print the results as JSON only.")
    return p.parse_args(argv)


def environment(spec: str) -> dict[str, str]:
    """``'K=V K2=V2'`` as a dict."""
    out = {}
    for item in spec.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"not an environment setting: {item!r} (want KEY=VALUE)")
        out[key] = value
    return out


@dataclass
class Side:
    """One deployment and what it measured."""

    spec: str
    settings: NatsSettings
    client: NatsflowClient
    tracker: Tracker
    orchestrator: Service
    latencies: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def summary(self, dispatch: list[float], work: list[float]) -> dict[str, float | str]:
        lat = self.latencies
        return {"side": self.spec, "p50_ms": statistics.median(lat),
                "p90_ms": statistics.quantiles(lat, n=10)[-1] if len(lat) > 1 else lat[0],
                "dispatched_to_started_ms": statistics.median(dispatch) * 1000,
                "started_to_succeeded_ms": statistics.median(work) * 1000}


def _start(spec: str, server: EmbeddedNats, workdir: Path, n: int) -> list[Service]:
    env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": f"p{n}" + uuid.uuid4().hex[:6],
           **environment(spec)}
    script = _SERVE
    if "ROOT" in env:  # the other tree's code, started by its own bench/_serve.py
        env.setdefault("PYTHONPATH", env["ROOT"])
        script = Path(env["ROOT"]) / "bench" / "_serve.py"
    return [Service(role, env, workdir / f"{role}-{n}.log", script=script).start()
            for role in ("orchestrator", "worker")]


async def _one(side: Side, base: WorkflowConfig, *, counted: bool) -> None:
    config = base.model_copy(update={"id": "pair" + uuid.uuid4().hex[:12]})
    assert config.id is not None
    done = side.tracker.expect(config.id)
    await side.client.create(config)
    latency = await asyncio.wait_for(done, 30)
    if counted:
        side.latencies.append(latency * 1000)
        side.ids.append(config.id)


async def _halves(side: Side, steps: int) -> tuple[list[float], list[float]]:
    """Per step: dispatched → started and started → succeeded, from the events."""
    js = side.client.nc.jetstream()
    info = await js.stream_info(side.settings.subjects.events_stream)
    sub = await js.subscribe(side.settings.subjects.events_of(), ordered_consumer=True)
    events: dict[str, dict[tuple[str, str | None], float]] = {}
    try:
        for _ in range(info.state.messages):
            ev = json.loads((await sub.next_msg(timeout=10)).data)
            at = datetime.fromisoformat(ev["time"]).timestamp()
            events.setdefault(ev["workflow_id"], {})[(ev["type"], ev.get("step_id"))] = at
    finally:
        await sub.unsubscribe()
    dispatch, work = [], []
    for wid in side.ids:
        times = events[wid]
        for i in range(steps):
            step = f"s{i}"  # chain_config's ids
            started = times[("step.started", step)]
            dispatch.append(started - times[("step.dispatched", step)])
            work.append(times[("step.succeeded", step)] - started)
    return dispatch, work


async def _load_rounds(args: argparse.Namespace, sides: list[Side]) -> dict[str, object]:
    """Both sides under one-step load at once, round after round; orchestrator CPU/wf."""
    base = chain_config(1, NOOP_TASK)
    per_wf: list[list[float]] = [[] for _ in sides]
    rates: list[list[float]] = [[] for _ in sides]
    for i in range(args.rounds + 1):  # the first round warms up and is not counted
        before = [cpu_seconds(side.orchestrator.pid) for side in sides]
        results = await asyncio.gather(*(run_load(
            side.client, side.tracker, name=f"load{n}-{i}", base=base, n=args.load,
            concurrency=args.concurrency, via=args.via, timeout=600.0)
            for n, side in enumerate(sides)))
        after = [cpu_seconds(side.orchestrator.pid) for side in sides]
        for n, result in enumerate(results):
            if result.completed != args.load:
                raise RuntimeError(f"side {n} finished {result.completed}/{args.load}")
            if i:
                per_wf[n].append((after[n] - before[n]) * 1000 / args.load)
                rates[n].append(result.workflows_per_s)
    ratios = [b / a for a, b in zip(per_wf[0], per_wf[1], strict=True)]
    return {"load": args.load, "rounds": args.rounds, "via": args.via,
            "sync_interval": args.sync,
            "sides": [{"side": side.spec, "orchestrator_ms_per_wf": statistics.median(cpu),
                       "workflows_per_s": statistics.median(rate)}
                      for side, cpu, rate in zip(sides, per_wf, rates, strict=True)],
            "cpu_ratio": statistics.median(ratios),
            "b_lower": sum(1 for r in ratios if r < 1), "pairs": len(ratios)}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log",
                          config=SYNC_CONFIG[args.sync])
    server.start()
    services: list[Service] = []
    try:
        nc = await connect(NatsSettings(servers=[server.url]), name="paired")
        sides = []
        for n, spec in enumerate((args.a, args.b)):
            started = _start(spec, server, workdir, n)
            services += started
            prefix = started[0].env["NATSFLOW_PREFIX"]
            settings = NatsSettings(servers=[server.url], prefix=prefix)
            tracker = Tracker(nc, settings.subjects)
            await tracker.start()
            sides.append(Side(spec, settings, NatsflowClient(nc, settings.subjects,
                                                             timeout=30.0), tracker,
                              started[0]))
        deadline = time.monotonic() + 60
        for side in sides:
            while not await side.client.ping():
                if time.monotonic() > deadline or not all(s.alive() for s in services):
                    raise RuntimeError("a deployment did not come up; see its logs in "
                                       f"{workdir}")
                await asyncio.sleep(0.2)
        if args.load:
            result = await _load_rounds(args, sides)
            await nc.drain()
            return result
        base = chain_config(args.steps, NOOP_TASK)
        for i in range(args.warmup + args.workflows):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                await _one(side, base, counted=i >= args.warmup)
        await asyncio.sleep(1.0)  # a workflow's last events may be seen before stored
        rows = [side.summary(*await _halves(side, args.steps)) for side in sides]
        diffs = [b - a for a, b in zip(sides[0].latencies, sides[1].latencies, strict=True)]
        await nc.drain()
        return {"steps": args.steps, "workflows": args.workflows, "sync_interval": args.sync,
                "sides": rows,
                "paired_diff_ms": statistics.median(diffs),
                "b_faster": sum(1 for d in diffs if d < 0), "pairs": len(diffs)}
    finally:
        for svc in reversed(services):
            svc.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-paired-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.load:
        for row in result["sides"]:  # type: ignore[attr-defined]
            print(f"[{row['side'] or 'this tree'}] orchestrator "
                  f"{row['orchestrator_ms_per_wf']:.3f} ms/wf, "
                  f"{row['workflows_per_s']:.0f} wf/s (both sides loaded at once)")
        print(f"CPU ratio B / A: median {result['cpu_ratio']:.3f}; B lower in "
              f"{result['b_lower']}/{result['pairs']} rounds")
        return 0
    for row in result["sides"]:  # type: ignore[attr-defined]
        print(f"[{row['side'] or 'this tree'}] p50 {row['p50_ms']:.2f} ms, "
              f"p90 {row['p90_ms']:.2f} ms; per step: dispatched→started "
              f"{row['dispatched_to_started_ms']:.3f} ms, started→succeeded "
              f"{row['started_to_succeeded_ms']:.3f} ms")
    print(f"paired difference B - A: median {result['paired_diff_ms']:+.2f} ms; "
          f"B faster in {result['b_faster']}/{result['pairs']} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
