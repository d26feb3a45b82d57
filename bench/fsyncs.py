"""Where a durable server's disk flushes go: fsyncs per workflow and per step (issue 17).

Usage::

    uv run python bench/fsyncs.py [--workflows N] [--steps K] [--load N] [--sync always|default]
                                  [--json]

It starts a nats-server with ``sync_interval: always`` (every acknowledged write
flushed), the orchestrator and a no-op worker as separate processes (as
bench/writes.py does), and runs N one-step workflows and then N K-step chains, one at
a time (and with ``--load N``, N one-step workflows with 64 creates in flight), each
phase under ``strace -ff`` attached to the server. Every flush is counted
by the file it flushed: an ``fsync`` of a stream's message block (a stored message, or
a 30-byte delete tombstone), of a directory, or a file opened ``O_SYNC`` (a consumer's
state, written at most ten times a second per consumer, then its directory fsynced).
Counts are per workflow and per step after the first; times are what strace says each
fsync took (strace itself slows every syscall, so they are an upper bound). See
bench/README.md, "Where the fsyncs go (durable mode)". Needs ``strace`` and the right
to trace (root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _load import Tracker, await_ready, chain_config, run_load, run_sequential, warm_up
from _procs import deployment
from _serve import NOOP_TASK
from _sync import SYNC_CONFIG
from rich.console import Console
from rich.table import Table

from natsflow.client import NatsflowClient

log = Console(stderr=True, highlight=False)

_TRACED = "fsync,fdatasync,sync_file_range,openat,write,pwrite64,unlinkat,renameat,renameat2"
#: ``HH:MM:SS.us name(args) = ret <secs>`` (``-ff``: one file per thread, so no call
#: is split in two), with ``-y`` paths in fds.
_LINE = re.compile(r"^(\d+):(\d+):([\d.]+) (\w+)\((.*)\) = (-?\d+).*?(?:<([\d.]+)>)?$")
_FD = re.compile(r"^(\d+)<([^>]*)>")
#: A delete tombstone: an empty record (22-byte header and 8-byte checksum).
TOMBSTONE_BYTES = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workflows", type=int, default=30, help="Workflows per phase.")
    p.add_argument("--steps", type=int, default=10, help="Steps of the chain phase (>= 2).")
    p.add_argument("--sync", choices=tuple(SYNC_CONFIG), default="always",
                   help="The server's sync_interval.")
    p.add_argument("--load", type=int, default=0,
                   help="Then this many one-step workflows with 64 creates in flight.")
    p.add_argument("--keep", type=Path, default=None,
                   help="Copy each phase's strace output into this directory.")
    p.add_argument("--timeout", type=float, default=300.0, help="Longest phase, seconds.")
    p.add_argument("--json", action="store_true", help="Print the results as JSON only.")
    args = p.parse_args(argv)
    if args.workflows < 1 or args.steps < 2:
        p.error("--workflows must be positive and --steps at least 2")
    return args


def where(path: str, store: str) -> str:
    """A short name for a file of the server's store: which stream, which part."""
    rel = path.removeprefix(store).lstrip("/")
    parts = rel.split("/")
    # jetstream/$G/streams/<stream>/{msgs/<n>.blk, obs/<consumer>/o.dat, ...}
    if len(parts) >= 4 and parts[2] == "streams":
        stream = parts[3]
        rest = parts[4:]
        if not rest:
            return f"{stream} (dir)"
        if rest[0] == "msgs":
            return f"{stream} msgs" + (" (dir)" if len(rest) == 1 else "")
        if rest[0] == "obs":
            if len(rest) <= 2:
                return f"{stream} consumer " + (rest[1] if len(rest) == 2 else "") + " (dir)"
            return f"{stream} consumer {rest[1]}"
        return f"{stream} {rest[0]}"
    return rel or "(store)"


@dataclass
class Flushes:
    """What one traced phase flushed, by file class and kind."""

    #: (file, kind) -> count; kind: "fsync message", "fsync tombstone", "fsync other",
    #: "O_SYNC write", "fsync dir"
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: seconds each fsync took (strace -T)
    seconds: list[float] = field(default_factory=list)
    new_blocks: Counter[str] = field(default_factory=Counter)
    removed_blocks: Counter[str] = field(default_factory=Counter)

    def total(self) -> int:
        """Every flush: fsyncs and O_SYNC writes."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class Flush:
    """One flush: when it began (seconds of the day), its thread, file and kind, and
    how long it took."""

    at: float
    tid: str
    file: str
    kind: str
    seconds: float


def parse_strace(threads: dict[str, str], store: str) -> tuple[Flushes, list[Flush]]:
    """Count flushes in ``strace -ff -tt -T -y`` output (thread id -> its text); and
    every flush in time order.

    The threads' calls are merged in time order first: a goroutine may move between
    threads from one call to the next (a block's write and its fsync, under the block's
    lock, are in order whatever thread makes them).
    """
    calls = []
    for tid, text in threads.items():
        for line in text.splitlines():
            m = _LINE.match(line.strip())
            if m is not None:
                at = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
                calls.append((at, tid, m[4], m[5], int(m[6]), float(m[7] or 0)))
    calls.sort(key=lambda c: c[0])
    out = Flushes()
    timeline: list[Flush] = []
    last_write: dict[str, int] = {}  # path -> bytes of its last write
    sync_fds: dict[str, str] = {}  # fd -> path of a file opened O_SYNC
    for at, tid, name, args, ret, secs in calls:
        fd = _FD.match(args)
        path = fd[2] if fd else ""
        kind = ""
        if name == "openat" and ret >= 0 and store in args:
            opened = args.split('"')[1]
            if "O_SYNC" in args:
                sync_fds[str(ret)] = opened
            if "O_CREAT" in args and opened.endswith(".blk"):
                out.new_blocks[where(opened, store)] += 1
        elif name in ("write", "pwrite64") and path.startswith(store):
            last_write[path] = ret
            if fd and sync_fds.get(fd[1]) == path:
                kind = "O_SYNC write"
        elif name in ("fsync", "fdatasync", "sync_file_range") and path.startswith(store):
            out.seconds.append(secs)
            if path.endswith(".blk"):
                size = last_write.pop(path, None)
                kind = ("fsync tombstone" if size == TOMBSTONE_BYTES else
                        "fsync message" if size is not None else "fsync other")
            elif "." not in Path(path).name:
                kind = "fsync dir"
            else:
                kind = "fsync other"
        elif name == "unlinkat" and ret == 0 and ".blk" in args:
            out.removed_blocks[where(args.split('"')[1], store)] += 1
        if kind:
            out.counts[(where(path, store), kind)] += 1
            timeline.append(Flush(at, tid, where(path, store), kind, secs))
    return out, timeline


def read_traces(prefix: Path) -> dict[str, str]:
    """``strace -ff -o prefix`` wrote ``prefix.<tid>`` per thread."""
    return {p.suffix[1:]: p.read_text() for p in prefix.parent.glob(prefix.name + ".*")}


class Strace:
    """``strace -f`` attached to one process for the length of a ``with`` block."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Strace:
        self.proc = subprocess.Popen(
            ["strace", "-ff", "-tt", "-T", "-y", "-qq", "-e", f"trace={_TRACED}",
             "-o", str(self.out), "-p", str(self.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread by then
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # detach
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both phases under strace; the server and services are always stopped."""
    async with deployment(workdir, name="fsyncs", sync=args.sync) as d:
        server = d.server
        client = NatsflowClient(d.nc, d.settings.subjects, timeout=30.0)
        await await_ready(client, d.alive)
        tracker = Tracker(d.nc, d.settings.subjects)
        await tracker.start()
        # consumers and first blocks are made now
        await warm_up(client, tracker, steps=(1, args.steps), task=NOOP_TASK, n=3)
        await asyncio.sleep(1.0)
        assert server.proc is not None
        store = str((workdir / "nats").resolve())
        out: dict[str, Any] = {"settings": {"workflows": args.workflows,
                                            "steps": args.steps, "sync_interval": args.sync}}
        flushes: dict[str, Flushes] = {}
        phases = [("one-step", 1, 0), ("chain", args.steps, 0)]
        if args.load:
            phases.append(("one-step load", 1, args.load))
        for name, steps, load in phases:
            trace = workdir / "trace" / name.replace(" ", "-")
            trace.parent.mkdir(exist_ok=True)
            with Strace(server.proc.pid, trace):
                t0 = time.perf_counter()
                base = chain_config(steps, NOOP_TASK)
                phase = await (run_load(client, tracker, name=f"fsyncs {name}", base=base,
                                        n=load, concurrency=64, via="create",
                                        timeout=args.timeout) if load else
                               run_sequential(client, tracker, name=f"fsyncs {name}",
                                              base=base, n=args.workflows, via="create",
                                              timeout=args.timeout))
                elapsed = time.perf_counter() - t0
                await asyncio.sleep(1.0)  # the last acks, tombstones, consumer states
            if phase.completed < phase.workflows or phase.failed:
                raise RuntimeError(f"{name}: {phase.completed}/{phase.workflows} "
                                   f"finished, {phase.failed} failed")
            threads = read_traces(trace)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for tid, text in threads.items():
                    (args.keep / f"{trace.name}.{tid}").write_text(text)
            flushes[name] = f = parse_strace(threads, store)[0]
            out[name] = _phase_report(f, phase.workflows, steps,
                                      statistics.median(phase.latencies) * 1000, elapsed)
        out["per_step"] = _per_step(flushes, args.workflows, args.steps)
        await tracker.stop()
        return out


def _phase_report(f: Flushes, n: int, steps: int, p50_ms: float,
                  elapsed: float) -> dict[str, Any]:
    rows = [{"file": file, "kind": kind, "per_workflow": round(c / n, 2)}
            for (file, kind), c in sorted(f.counts.items())]
    secs = sorted(f.seconds)
    return {"steps": steps, "workflows": n, "flushes_per_workflow": round(f.total() / n, 2),
            "p50_ms_under_strace": round(p50_ms, 2), "seconds": round(elapsed, 2),
            "fsync_ms_p50": round(statistics.median(secs) * 1000, 3) if secs else 0.0,
            "fsync_ms_sum_per_workflow": round(sum(secs) * 1000 / n, 2),
            "new_blocks_per_workflow": {k: round(v / n, 2) for k, v in f.new_blocks.items()},
            "removed_blocks_per_workflow": {k: round(v / n, 2)
                                            for k, v in f.removed_blocks.items()},
            "rows": rows}


def _per_step(flushes: dict[str, Flushes], n: int, steps: int) -> dict[str, Any]:
    """Each step after the first: (chain - one-step) / (steps - 1), per file and kind."""
    one, chain = flushes["one-step"].counts, flushes["chain"].counts
    keys = sorted(set(one) | set(chain))
    rows = defaultdict(float)
    for key in keys:
        rows[key] = round((chain[key] - one[key]) / n / (steps - 1), 2)
    total = (flushes["chain"].total() - flushes["one-step"].total()) / n / (steps - 1)
    return {"flushes": round(total, 2),
            "rows": [{"file": f, "kind": k, "per_step": v} for (f, k), v in rows.items()
                     if v]}


def show(report: dict[str, Any], console: Console) -> None:
    """One table per phase, and the marginal step."""
    for name in ("one-step", "chain", "one-step load"):
        if name not in report:
            continue
        ph = report[name]
        table = Table(title=f"{name} ({ph['steps']} step(s)): {ph['flushes_per_workflow']:.2f} "
                            f"flushes per workflow; fsync p50 {ph['fsync_ms_p50']:.3f} ms, "
                            f"{ph['fsync_ms_sum_per_workflow']:.1f} ms of fsync per workflow; "
                            f"p50 {ph['p50_ms_under_strace']:.1f} ms under strace")
        for col in ("file", "kind", "per wf"):
            table.add_column(col, justify="right" if col == "per wf" else "left")
        for row in ph["rows"]:
            table.add_row(row["file"], row["kind"], f"{row['per_workflow']:.2f}")
        console.print(table)
        console.print(f"  new blocks/wf {ph['new_blocks_per_workflow']}, removed blocks/wf "
                      f"{ph['removed_blocks_per_workflow']}")
    per = report["per_step"]
    table = Table(title=f"each step after the first: {per['flushes']:.2f} flushes")
    for col in ("file", "kind", "per step"):
        table.add_column(col, justify="right" if col == "per step" else "left")
    for row in per["rows"]:
        table.add_row(row["file"], row["kind"], f"{row['per_step']:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 when every workflow finished."""
    args = parse_args(argv)
    if shutil.which("strace") is None:
        sys.exit("bench/fsyncs.py needs strace")
    with tempfile.TemporaryDirectory(prefix="natsflow-fsyncs-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report, Console() if sys.stdout.isatty() else Console(width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
