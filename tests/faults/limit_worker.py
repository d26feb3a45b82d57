"""A worker that records the start and the end of every task, for the flow-control ledger.

Run as ``natsflow worker limit_worker:worker`` (with this directory on PYTHONPATH), with
``LIMIT_LEDGER`` naming the ledger file: one JSON line per start and per end, with the
task's ``key``, its workflow, attempt, pid and wall time. A task's input says how long it
runs (``seconds``) and whether it fails (``fail``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from natsflow.worker import TaskContext, Worker

__all__ = ["LIMIT_TASK", "read_ledger", "worker"]

LIMIT_TASK = "limits.work"

worker = Worker(concurrency=32, name="limit-worker", ack_wait=2.0)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every line of the ledger."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(ctx: TaskContext, key: str, phase: str, **more: Any) -> None:
    line = json.dumps({"wf": ctx.workflow_id, "step": ctx.step_id, "attempt": ctx.attempt,
                       "key": key, "phase": phase, "t": time.time(), "pid": os.getpid(),
                       **more}) + "\n"
    fd = os.open(os.environ["LIMIT_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@worker.task(LIMIT_TASK)
async def work(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """Run ``seconds``, recording the start and the end (also when cancelled)."""
    key = str(data.get("key", ""))
    _append(ctx, key, "start")
    outcome = "cancelled"
    try:
        await asyncio.sleep(float(data.get("seconds", 0.2)))
        if data.get("fail"):
            outcome = "failed"
            raise RuntimeError("asked to fail")
        outcome = "done"
        return {"key": key}
    finally:
        _append(ctx, key, "end", outcome=outcome)
