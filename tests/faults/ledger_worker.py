"""A worker whose task leaves a side effect in a ledger file, and can die around it.

Run as ``natsflow worker ledger_worker:worker`` (with this directory on PYTHONPATH).
Environment:

    LEDGER_PATH      the ledger: one JSON object per line (required)
    LEDGER_CRASH     ""            never die
                     "mid-task"    SIGKILL after the task began, before its side effect
                     "after-write" SIGKILL after the side effect, before the result
                     "always"      SIGKILL in every execution (a poison task)
    LEDGER_ACK_WAIT  the task ack wait this worker declares (seconds)
    LEDGER_MAX_DELIVERIES  deliveries of a task before this worker dead-letters it

Only the first execution of an idempotency key dies (the ledger says whether there was
one), so the redelivered task finishes. Each execution appends ``begin`` when it starts
and ``effect`` when it does its side effect, both with its idempotency key, attempt and
pid: a key with two ``effect`` lines is a side effect done twice for one attempt, which
promise 4 allows and the key makes detectable.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from natsflow.worker import TaskContext, Worker
from transport.streams import TASK_ACK_WAIT

__all__ = ["LEDGER_TASK", "read_ledger", "worker"]

LEDGER_TASK = "ledger.write"

# One task at a time: a death takes down exactly the execution that chose to die.
worker = Worker(concurrency=1, name="ledger-worker",
                ack_wait=float(os.environ.get("LEDGER_ACK_WAIT") or TASK_ACK_WAIT),
                max_deliveries=int(os.environ.get("LEDGER_MAX_DELIVERIES") or 10))


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every line of the ledger."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, ctx: TaskContext, phase: str) -> None:
    line = json.dumps({"idempotency_key": ctx.idempotency_key, "attempt": ctx.attempt,
                       "pid": os.getpid(), "phase": phase}) + "\n"
    # One write of a short line with O_APPEND: lines of concurrent workers never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@worker.task(LEDGER_TASK)
async def write(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """Record the side effect; die around it the first time if LEDGER_CRASH says so."""
    path = Path(os.environ["LEDGER_PATH"])
    crash = os.environ.get("LEDGER_CRASH", "")
    first = not any(e["idempotency_key"] == ctx.idempotency_key for e in read_ledger(path))
    _append(path, ctx, "begin")
    await asyncio.sleep(0.05)  # the task is running: the mid-task crash comes here
    if (first and crash == "mid-task") or crash == "always":
        _die()
    _append(path, ctx, "effect")
    if first and crash == "after-write":
        _die()
    return {"pid": os.getpid(), **data}
