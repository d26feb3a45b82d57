"""Flow control on a real nats-server: keyed workflow limits, step limits, rate limits."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import read_events

from contracts.models import EventType, StepState, WorkflowConfig, WorkflowState
from natsflow.client import NatsflowClient
from natsflow.worker import TaskContext, Worker
from orchestrator import Orchestrator
from transport.connect import NatsSettings


@dataclass
class Ledger:
    """Every task's start and end, as the worker saw them."""

    spans: list[tuple[str, str, float, float]] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    most: dict[str, int] = field(default_factory=dict)

    def most_at_once(self, key: str) -> int:
        return self.most.get(key, 0)


@pytest.fixture
async def ledger(engine: object, settings: NatsSettings) -> AsyncIterator[Ledger]:
    led = Ledger()
    worker = Worker(concurrency=64, name="ledger")

    @worker.task("lim.work")
    async def work(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        key = str(data.get("key", ""))
        start = time.monotonic()
        led.running[key] = led.running.get(key, 0) + 1
        led.most[key] = max(led.most.get(key, 0), led.running[key])
        try:
            await asyncio.sleep(float(data.get("seconds", 0.1)))
        finally:
            led.running[key] -= 1
            led.spans.append((ctx.workflow_id, key, start, time.monotonic()))
        return {"key": key}

    async with worker.running(settings):
        yield led


async def test_a_keyed_workflow_limit_runs_one_per_key_in_order(
        ledger: Ledger, client: NatsflowClient) -> None:
    ids = []
    for i in range(8):
        key = "ab"[i % 2]
        wid = f"k{i}"
        ids.append(wid)
        await client.create({
            "name": "serial", "id": wid, "input": {"customer": key},
            "concurrency": {"key": "${input.customer}", "limit": 1},
            "steps": [{"id": "w", "task": "lim.work",
                       "input": {"key": "${input.customer}", "seconds": 0.2}}]})
    queued = (await client.get("k6")).status
    assert queued is not None and queued.state == WorkflowState.QUEUED
    for wid in ids:
        st = (await client.wait(wid, timeout=30)).status
        assert st is not None and st.state == WorkflowState.COMPLETED
    assert ledger.most_at_once("a") == 1 and ledger.most_at_once("b") == 1
    # both keys ran side by side, each in submission order
    order = {k: [w for w, kk, _, _ in sorted(ledger.spans, key=lambda s: s[2]) if kk == k]
             for k in "ab"}
    assert order == {"a": ["k0", "k2", "k4", "k6"], "b": ["k1", "k3", "k5", "k7"]}
    events = await read_events(client.nc, client.subjects, "k6", terminals=1)
    kinds = [e.type for e in events]
    assert EventType.WORKFLOW_QUEUED in kinds and EventType.WORKFLOW_DEQUEUED in kinds
    queued_ev = next(e for e in events if e.type == EventType.WORKFLOW_QUEUED)
    assert queued_ev.data["key"] == "a" and queued_ev.data["position"] >= 1
    assert kinds.index(EventType.WORKFLOW_DEQUEUED) < kinds.index(EventType.WORKFLOW_STARTED)


async def test_a_task_type_limit_holds_across_workflows_and_frees_on_failure(
        ledger: Ledger, client: NatsflowClient) -> None:
    for i in range(10):
        await client.create({
            "name": f"charge-{i}", "id": f"c{i}",
            "steps": [{"id": "charge", "task": "lim.work", "concurrency": {"limit": 3},
                       "input": {"key": "all", "seconds": 0.3}}]})
    # a workflow stopped while its step waits gives its place back
    await client.create({
        "name": "stopped", "id": "cs",
        "steps": [{"id": "charge", "task": "lim.work", "concurrency": {"limit": 3},
                   "input": {"key": "all", "seconds": 0.3}}]})
    st = (await client.get("cs")).status
    assert st is not None and st.step("charge").state == StepState.THROTTLED
    await client.stop("cs")
    for i in range(10):
        done = (await client.wait(f"c{i}", timeout=30)).status
        assert done is not None and done.state == WorkflowState.COMPLETED
    assert ledger.most_at_once("all") == 3
    stopped = (await client.wait("cs", timeout=10)).status
    assert stopped is not None and stopped.state == WorkflowState.STOPPED


async def test_a_rate_limit_spaces_steps_across_two_orchestrators(
        ledger: Ledger, client: NatsflowClient, settings: NatsSettings) -> None:
    n, per_second = 60, 20
    async with Orchestrator(settings, stop_grace=2.0):
        t0 = time.monotonic()
        for i in range(n):
            await client.create({
                "name": "rated", "id": f"r{i}",
                "steps": [{"id": "call", "task": "lim.work", "input": {"seconds": 0},
                           "rate_limit": {"limit": per_second, "per": "1s"}}]})
        for i in range(n):
            done = (await client.wait(f"r{i}", timeout=30)).status
            assert done is not None and done.state == WorkflowState.COMPLETED
        took = time.monotonic() - t0
    assert took >= (n - 1) / per_second
    # Where the orchestrators dispatch: the rate limit's guarantee (a worker takes a
    # task a little later, by its own fetch).
    dispatched = await read_events(client.nc, client.subjects, "*",
                                   EventType.STEP_DISPATCHED.value, terminals=None, count=n)
    times = sorted(e.time.timestamp() for e in dispatched if e.workflow_id.startswith("r"))
    assert len(times) == n and len(ledger.spans) == n
    window = max(sum(1 for u in times if s <= u < s + 1.0) for s in times)
    assert window <= per_second, f"{window} dispatched in one second"


async def test_limits_show_over_nats_http_the_cli_and_the_gauges(
        ledger: Ledger, client: NatsflowClient, settings: NatsSettings) -> None:
    import httpx
    from helpers import run_cli

    from gateway import create_app
    for i in range(3):
        await client.create({
            "name": "shown", "id": f"s{i}", "input": {"c": "acme"},
            "concurrency": {"key": "${input.c}", "limit": 1},
            "steps": [{"id": "w", "task": "lim.work", "input": {"key": "s", "seconds": 2}}]})
    async with Orchestrator(settings, stop_grace=2.0, queue_sample_interval=0.2) as orch:
        for _ in range(100):
            listed = (await client.list_limits(limit="wf:shown")).limits
            if listed and listed[0].in_use == 1 and listed[0].waiting == 2:
                break
            await asyncio.sleep(0.1)
        assert [(s.limit, s.key, s.max, s.in_use, s.waiting) for s in listed] == [
            ("wf:shown", "acme", 1, 1, 2)]
        assert listed[0].holders == ["s0#1"] and listed[0].queue == ["s1#1", "s2#1"]
        await asyncio.sleep(0.5)
        gauges = {(m.name, s.labels.get("limit")): s.value
                  for m in orch.metrics.registry.collect() for s in m.samples}
        assert gauges[("natsflow_limit_in_use", "wf:shown")] == 1
        assert gauges[("natsflow_limit_waiting", "wf:shown")] == 2
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=client.nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        body = (await http.get("/limits", params={"limit": "wf:shown"})).json()
        assert body["limits"][0]["queue"][0] in ("s1#1", "s2#1")
        assert (await http.get("/limits", params={"limit": "x" * 500})).status_code == 400
    code, out, err = await run_cli("limits", "wf:shown", "--json", settings=settings)
    assert code == 0, err
    assert '"wf:shown"' in out
    for i in range(3):
        done = (await client.wait(f"s{i}", timeout=30)).status
        assert done is not None and done.state == WorkflowState.COMPLETED
    left = (await client.list_limits(limit="wf:shown")).limits
    assert left[0].in_use == 0 and left[0].waiting == 0


async def test_a_shared_limit_is_handed_out_round_robin_between_keys(
        ledger: Ledger, client: NatsflowClient) -> None:
    # submitted one key's backlog after the other: a0 a1 a2 b0 b1 b2 c0 c1 c2
    for key in "abc":
        for i in range(3):
            await client.create({
                "name": "fair", "id": f"f{key}{i}", "input": {"tenant": key},
                "concurrency": [{"key": "${input.tenant}", "limit": 1},
                                {"name": "fair-all", "limit": 1}],
                "steps": [{"id": "w", "task": "lim.work",
                           "input": {"key": "fair", "seconds": 0.4}}]})
    for key in "abc":
        for i in range(3):
            done = (await client.wait(f"f{key}{i}", timeout=30)).status
            assert done is not None and done.state == WorkflowState.COMPLETED
    order = [w for w, k, _, _ in sorted(ledger.spans, key=lambda s: s[2]) if k == "fair"]
    assert order == ["fa0", "fb0", "fc0", "fa1", "fb1", "fc1", "fa2", "fb2", "fc2"]
    assert ledger.most_at_once("fair") == 1


FLOW_DOC = (Path(__file__).resolve().parent.parent / "docs" / "flow-control.md").read_text()
FLOW_YAML = re.findall(r"^```yaml\n(.*?)^```", FLOW_DOC, flags=re.S | re.M)


@pytest.mark.parametrize("block", FLOW_YAML, ids=lambda b: b.split("\n")[0])
def test_every_workflow_in_the_flow_control_doc_is_valid(block: str) -> None:
    config = WorkflowConfig.model_validate(yaml.safe_load(block))
    assert config.concurrency or any(s.concurrency or s.rate_limit for s in config.steps)


async def test_the_first_flow_control_example_queues_a_second_run_of_one_customer(
        demo_worker: object, client: NatsflowClient) -> None:
    assert len(FLOW_YAML) >= 5
    config = yaml.safe_load(FLOW_YAML[0])
    await client.create({**config, "id": "inv1"})
    await client.create({**config, "id": "inv2"})
    await client.create({**config, "id": "other", "input": {"customer": "bolt"}})
    second = (await client.get("inv2")).status
    assert second is not None and second.state == WorkflowState.QUEUED
    for wid in ("inv1", "inv2", "other"):
        done = (await client.wait(wid, timeout=30)).status
        assert done is not None and done.state == WorkflowState.COMPLETED
    first, late, other = [(await client.get(w)).status for w in ("inv1", "inv2", "other")]
    assert first and late and other and first.finished_at and late.started_at
    assert late.started_at >= first.finished_at
    assert other.started_at is not None and other.started_at < first.finished_at


async def test_cancel_newest_refuses_and_cancel_oldest_stops_the_oldest(
        ledger: Ledger, client: NatsflowClient) -> None:
    def run(wid: str, policy: str) -> dict[str, Any]:
        return {"name": f"p-{policy}", "id": wid,
                "concurrency": {"limit": 1, "policy": policy},
                "steps": [{"id": "w", "task": "lim.work",
                           "input": {"key": policy, "seconds": 1.5}}]}

    for policy in ("cancel_newest", "cancel_oldest"):
        await client.create(run(f"{policy}-1", policy))
        for _ in range(50):
            first = (await client.get(f"{policy}-1")).status
            if first is not None and first.state == WorkflowState.RUNNING:
                break
            await asyncio.sleep(0.1)
        await client.create(run(f"{policy}-2", policy))
    refused = (await client.wait("cancel_newest-2", timeout=10)).status
    assert refused is not None and refused.state == WorkflowState.STOPPED
    assert refused.error is not None and refused.error.code == "concurrency-limit"
    kept = (await client.wait("cancel_newest-1", timeout=10)).status
    assert kept is not None and kept.state == WorkflowState.COMPLETED
    oldest = (await client.wait("cancel_oldest-1", timeout=15)).status
    newest = (await client.wait("cancel_oldest-2", timeout=15)).status
    assert oldest is not None and oldest.state == WorkflowState.STOPPED
    assert newest is not None and newest.state == WorkflowState.COMPLETED
    assert oldest.finished_at is not None and newest.started_at is not None
    assert newest.started_at >= oldest.finished_at  # it took the permit given back
