"""The flow-control ledger: three orchestrator processes, SIGKILLs, a worker's ledger.

Forty runs over four customers, each under two limits at once (one run per customer,
three in all), some failing, some timing out, some stopped; two of the three
orchestrators are SIGKILLed again and again while they run. The worker writes the
start and the end of every task to a ledger. Proven from the ledger and the stored
state: never more than the limit running for any key at any instant, every queued run
ran, nothing ran twice, and every permit came back (the limits bucket ends empty).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fault_procs import ENGINE_ACK_WAIT, Service, drain, killer, supervise, wait_ready
from limit_worker import LIMIT_TASK, read_ledger

from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

KEYS = ["acme", "bolt", "cask", "dune"]
RUNS = 40
GLOBAL = 3


def run_config(i: int) -> tuple[dict[str, Any], WorkflowState]:
    key = KEYS[i % len(KEYS)]
    seconds, extra, fail = 0.25, {}, False
    expected = WorkflowState.COMPLETED
    if i % 7 == 3:
        fail, expected = True, WorkflowState.FAILED
    elif i % 11 == 5:  # times out while its task runs
        # The task far outlasts the timeout: a timer's redelivery after a killed
        # orchestrator (the ack wait) must not let the task's result come first.
        seconds, extra, expected = 8.0, {"timeout": 0.6}, WorkflowState.FAILED
    return {
        "name": "ledger", "id": f"run-{i:02d}", "input": {"customer": key},
        "concurrency": [{"key": "${input.customer}", "limit": 1},
                        {"name": "ledger-all", "limit": GLOBAL}],
        "steps": [{"id": "work", "task": LIMIT_TASK,
                   "input": {"key": "${input.customer}", "seconds": seconds, "fail": fail}}],
        **extra}, expected


def overlaps(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, d in points:
        now += d
        most = max(most, now)
    return most


async def test_limits_hold_across_three_killed_orchestrators(
        settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    client = NatsflowClient(client.nc, client.subjects, timeout=3.0)
    ledger = tmp_path / "ledger.jsonl"
    orchs = [Service(f"orchestrator{r}", ["orchestrator"], settings, tmp_path,
                     env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                     ready_line="orchestrator ready") for r in range(3)]
    worker = Service("worker", ["worker", "limit_worker:worker"], settings, tmp_path,
                     env={"LIMIT_LEDGER": str(ledger)}, ready_line="serving")
    configs = [run_config(i) for i in range(RUNS)]
    ids = [str(c["id"]) for c, _ in configs]
    async with supervise(*orchs, worker):
        await wait_ready([*orchs, worker])
        stop_killing = asyncio.Event()
        killers = [asyncio.create_task(killer(o, seed=s, until=stop_killing,
                                              between=(0.8, 2.0)))
                   for s, o in enumerate(orchs[:2])]
        for config, _ in configs:
            for _ in range(50):  # an API request to a replica just killed times out
                try:
                    await client.create(config)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        stopped = ["run-37", "run-38"]  # queued behind their keys when stopped
        for wid in stopped:
            for _ in range(50):
                try:
                    await client.stop(wid)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        await asyncio.sleep(6.0)
        stop_killing.set()
        kills = sum(len(k) for k in await asyncio.gather(*killers))
        still_open = await drain(client, ids, timeout=90)
        statuses = {wid: (await client.get(wid)).status for wid in ids}
        kv = await client.nc.jetstream().key_value(settings.subjects.limits_bucket)
        # A return is a message to the limiters, applied after the run's end is stored:
        # one taken by a limiter killed before its ack comes again after the ack wait.
        for _ in range(int(5 * ENGINE_ACK_WAIT / 0.2)):
            pools = [json.loads((await kv.get(k)).value or b"{}") for k in await kv.keys()]
            if pools and all(not p.get("holders") and not p.get("waiting") for p in pools):
                break
            await asyncio.sleep(0.2)
    assert kills >= 2, "no orchestrator was killed: nothing proven"
    assert not still_open, still_open
    for (_, expected), wid in zip(configs, ids, strict=True):
        st = statuses[wid]
        assert st is not None
        want = WorkflowState.STOPPED if wid in stopped else expected
        assert st.state == want, (wid, st.state, st.error)
    lines = read_ledger(ledger)
    for _ in range(100):  # a cancelled task ends when its cancel notice comes
        if {(x["wf"], x["attempt"]) for x in lines if x["phase"] == "end"} >= {
                (x["wf"], x["attempt"]) for x in lines if x["phase"] == "start"}:
            break
        await asyncio.sleep(0.1)
        lines = read_ledger(ledger)
    starts = [x for x in lines if x["phase"] == "start"]
    ends = {(x["wf"], x["attempt"]): x for x in lines if x["phase"] == "end"}
    # nothing ran twice (the worker never died: each task ran once)
    assert len({x["wf"] for x in starts}) == len(starts)
    ran = {x["wf"] for x in starts}
    # every queued run ran (but those stopped before their turn)
    assert ran >= {wid for wid in ids if wid not in stopped}
    # never more than the limit: per key, and in all (a task cancelled because its run
    # timed out runs on for the moment its cancel notice takes: left out)
    spans: dict[str, list[tuple[float, float]]] = {}
    for x in starts:
        end = ends[(x["wf"], x["attempt"])]
        if end["outcome"] != "cancelled":
            spans.setdefault(x["key"], []).append((x["t"], end["t"]))
    for key, key_spans in spans.items():
        assert overlaps(key_spans) <= 1, key
    assert overlaps([s for v in spans.values() for s in v]) <= GLOBAL
    assert overlaps([s for v in spans.values() for s in v]) >= 2, "the limits ran serially"
    # every permit came back, however its run ended
    assert pools and all(not p.get("holders") and not p.get("waiting") for p in pools), pools
