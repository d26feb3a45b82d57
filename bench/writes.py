"""Exactly how many JetStream writes a workflow and a step of a chain cost (issue 17).

Usage::

    uv run python bench/writes.py [--workflows N] [--steps K] [--sync default|always] [--json]

It starts a nats-server (temporary store), the orchestrator and a no-op worker as
separate processes (as bench/throughput.py does), runs N one-step workflows and then N
K-step chains, one at a time, and reads every stream of the server (KV buckets are
streams too) before and after each phase: the ``state.last_seq`` delta is what was
stored, whether a work queue has deleted it since or not; ``messages`` is what is still
there. A tap (a core NATS subscription on the deployment's subjects and ``$KV.>``)
names what the writes were: which event, which bucket, which inbox message. Counts are
exact whatever the load of the machine; one workflow at a time, none is merged with
another's. See bench/README.md, "Writes per step (issue 17)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from _load import (
    Snapshot,
    Tracker,
    await_ready,
    chain_config,
    run_sequential,
    settled,
    snapshot,
    warm_up,
)
from _procs import Deployment, deployment
from _serve import NOOP_TASK
from _sync import SYNC_CONFIG
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.table import Table

from contracts.subjects import Subjects
from natsflow.client import NatsflowClient

log = Console(stderr=True, highlight=False)

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workflows", type=int, default=50, help="Workflows per phase.")
    p.add_argument("--steps", type=int, default=10, help="Steps of the chain phase (>= 2).")
    p.add_argument("--sync", choices=tuple(SYNC_CONFIG), default="default",
                   help="The server's sync_interval (the counts do not depend on it).")
    p.add_argument("--timeout", type=float, default=300.0, help="Longest phase, seconds.")
    p.add_argument("--json", action="store_true", help="Print the results as JSON only.")
    args = p.parse_args(argv)
    if args.workflows < 1 or args.steps < 2:
        p.error("--workflows must be positive and --steps at least 2")
    return args


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more at the end."""
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def what(subjects: Subjects, subject: str) -> str:
    """A name for what a stored message is, from its subject."""
    if subject.startswith("$KV."):
        return "kv " + subject.split(".")[1]
    rest = subject.removeprefix(subjects.prefix + ".")
    head, _, tail = rest.partition(".")
    if head == "events":  # events.<id>.<type...>
        return "event " + tail.partition(".")[2]
    if head == "cmd":
        return "cmd." + tail.partition(".")[0]
    return head


class Tap:
    """Counts every message on the deployment's subjects and KV puts, by what it is."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.seen: Counter[str] = Counter()
        self._subs: list[Any] = []

    async def start(self) -> None:
        """Subscribe (before anything to count is sent)."""
        for subject in (f"{self.subjects.prefix}.>", "$KV.>"):
            self._subs.append(await self.nc.subscribe(
                subject, cb=self._on, pending_msgs_limit=1_000_000,
                pending_bytes_limit=1024**3))

    async def _on(self, msg: Msg) -> None:
        self.seen[msg.subject] += 1

    def take(self) -> Counter[str]:
        """What was seen since the last take."""
        seen, self.seen = self.seen, Counter()
        return seen


def breakdown(before: Snapshot, after: Snapshot, captures: dict[str, list[str]],
              seen: Counter[str], subjects: Subjects, n: int) -> dict[str, Any]:
    """Per stream: stored (last_seq delta) and still there (messages delta), per
    workflow, with what the stored messages were (from the tap)."""
    streams: dict[str, Any] = {}
    # The orchestrators' liveness keys (partition ownership) are renewed every 1.5 s
    # whatever runs: a cost per second, not per workflow, reported apart.
    members = f"KV_{subjects.members_bucket}"
    background = {name: after[name][1] - before.get(name, (0, 0, 0))[1]
                  for name in after if name == members}
    for name in sorted(after):
        if name == members:
            continue
        stored = after[name][1] - before.get(name, (0, 0, 0))[1]
        kept = after[name][0] - before.get(name, (0, 0, 0))[0]
        kinds: Counter[str] = Counter()
        for subject, count in seen.items():
            if any(subject_matches(p, subject) for p in captures.get(name, [])):
                kinds[what(subjects, subject)] += count
        if stored == 0 and not kinds:
            continue
        streams[name] = {"stored": stored, "still_there": kept,
                         "stored_per_workflow": round(stored / n, 3),
                         "published_per_workflow": {k: round(v / n, 3)
                                                    for k, v in sorted(kinds.items())}}
    total = sum(s["stored"] for s in streams.values())
    return {"workflows": n, "stored": total, "stored_per_workflow": round(total / n, 3),
            "streams": streams, "background": background}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both phases; the server and services are always stopped."""
    async with deployment(workdir, name="writes", sync=args.sync) as d:
        return await _phases(args, d)


async def _phases(args: argparse.Namespace, d: Deployment) -> dict[str, Any]:
    nc, subjects = d.nc, d.settings.subjects
    client = NatsflowClient(nc, subjects, timeout=30.0)
    await await_ready(client, d.alive)
    tracker, tap = Tracker(nc, subjects), Tap(nc, subjects)
    await tracker.start()
    await tap.start()
    await warm_up(client, tracker, steps=(1, args.steps), task=NOOP_TASK, n=2)
    out: dict[str, Any] = {"settings": {"workflows": args.workflows, "steps": args.steps,
                                        "sync_interval": args.sync}}
    for name, steps in (("one-step", 1), ("chain", args.steps)):
        before = await settled(nc)
        tap.take()
        phase = await run_sequential(client, tracker, name=f"writes {name}",
                                     base=chain_config(steps, NOOP_TASK),
                                     n=args.workflows, via="create", timeout=args.timeout)
        if phase.completed < phase.workflows or phase.failed:
            raise RuntimeError(f"{name}: {phase.completed}/{phase.workflows} finished, "
                               f"{phase.failed} failed")
        after = await settled(nc)
        _, captures = await snapshot(nc)
        out[name] = breakdown(before, after, captures, tap.take(), subjects, args.workflows)
        out[name]["steps"] = steps
    one, chain = out["one-step"]["stored_per_workflow"], out["chain"]["stored_per_workflow"]
    out["per_step"] = {"chain_total_over_steps": round(chain / args.steps, 3),
                       "marginal": round((chain - one) / (args.steps - 1), 3)}
    await tracker.stop()
    return out


def show(report: dict[str, Any], console: Console) -> None:
    """Draw one table per phase."""
    for name in ("one-step", "chain"):
        ph = report[name]
        table = Table(title=f"{name} ({ph['steps']} step(s)): {ph['stored_per_workflow']:.2f} "
                            "stored messages per workflow")
        for col in ("stream", "stored/wf", "what (published/wf)"):
            table.add_column(col, justify="left" if col != "stored/wf" else "right")
        for stream, s in ph["streams"].items():
            table.add_row(stream, f"{s['stored_per_workflow']:.2f}", ", ".join(
                f"{k} {v:g}" for k, v in s["published_per_workflow"].items()))
        console.print(table)
    per = report["per_step"]
    console.print(f"per step of a {report['chain']['steps']}-step chain: "
                  f"{per['chain_total_over_steps']:.2f} (total / steps), "
                  f"{per['marginal']:.2f} (each step after the first)")


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 when every workflow finished."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-writes-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report, Console() if sys.stdout.isatty() else Console(width=110))
    return 0


if __name__ == "__main__":
    sys.exit(main())
