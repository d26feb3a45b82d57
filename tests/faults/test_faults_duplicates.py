"""Every command and result the orchestrator consumed, delivered again, out of order.

A plain core NATS subscription on the inbox subjects sees every message the engine
will consume. Republished with new ``Nats-Msg-Id`` headers, JetStream's duplicate window
does not catch them: that is a redelivery after the window, or a publisher that retried
with a fresh id. The engine alone must recognise them.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from fault_nats import fan_in, wait_terminal
from helpers import Probe
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from natsflow.promises import check_all, collect
from orchestrator import Orchestrator
from transport.connect import NatsSettings

pytestmark = pytest.mark.faults

N = 40
#: Header marking the copies this test publishes, so the tap does not copy them again.
COPY = "Fault-Copy"


@dataclass(frozen=True)
class Captured:
    subject: str
    data: bytes
    headers: dict[str, str]


class Tap:
    """Every message published on the inbox subjects, as it was published."""

    def __init__(self, nc: Client, settings: NatsSettings, *, echo: int = 0) -> None:
        self.nc = nc
        self.settings = settings
        self.echo = echo
        self.seen: list[Captured] = []
        self._copies: set[asyncio.Task[None]] = set()

    async def on_message(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        if COPY in headers:
            return
        captured = Captured(msg.subject, msg.data, headers)
        self.seen.append(captured)
        for _ in range(self.echo):  # live duplicates, while the workflow runs
            task = asyncio.create_task(self.republish([captured]))
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    async def republish(self, msgs: Sequence[Captured]) -> None:
        """Publish each again with a new message id (past any duplicate window)."""
        js = self.nc.jetstream()
        for m in msgs:
            headers = {k: v for k, v in m.headers.items() if k != "Nats-Msg-Id"}
            headers |= {"Nats-Msg-Id": f"copy-{uuid.uuid4().hex}", COPY: "1"}
            await js.publish(m.subject, m.data, headers=headers)

    async def settle(self) -> None:
        while self._copies:
            await asyncio.gather(*list(self._copies))


@pytest.fixture
async def tap(nc: Client, settings: NatsSettings, engine: Orchestrator
              ) -> AsyncIterator[Tap]:
    tap = Tap(nc, settings)
    subs = [await nc.subscribe(subject, cb=tap.on_message)
            for subject in settings.subjects.inbox_subjects]
    await nc.flush()
    yield tap
    for sub in subs:
        await sub.unsubscribe()


async def drained(nc: Client, settings: NatsSettings, *, timeout: float = 20.0) -> None:
    """Wait until the engine has taken and acked everything on the inbox."""
    s = settings.subjects
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        engines = [await js.consumer_info(s.inbox_stream, n) for n in s.engine_consumers]
        timers = [await js.consumer_info(s.inbox_stream, n) for n in s.timer_consumers]
        # Timers not yet due (each workflow's worker-grace look) are held by the timer
        # consumers until then, on purpose: taken is enough for them.
        if all(e.num_pending == e.num_ack_pending == 0 for e in engines) and all(
                t.num_pending == 0 for t in timers):
            return
        infos = [*engines, *timers]
        assert loop.time() < deadline, f"inbox not drained: {infos}"
        await asyncio.sleep(0.1)


async def snapshot(client: NatsflowClient, ids: Sequence[str]
                   ) -> dict[str, tuple[str, list[str]]]:
    """Each workflow's stored status (JSON, timestamps included) and its events."""
    found = await collect(client, ids)
    out = {}
    for wid, (status, events) in found.items():
        assert status is not None, wid
        out[wid] = (status.model_dump_json(), [e.model_dump_json() for e in events])
    return out


async def create_all(client: NatsflowClient, tag: str) -> list[str]:
    replies = await asyncio.gather(*(client.create(fan_in(i, tag)) for i in range(N)))
    return [r.id for r in replies]


async def test_every_inbox_message_delivered_twice_more_out_of_order_changes_nothing(
        tap: Tap, demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    ids = await create_all(client, "dup")
    await wait_terminal(client, ids, timeout=30)
    await drained(nc, settings)
    before = await snapshot(client, ids)
    runs = dict(demo_worker.runs)
    kinds = {m.subject.split(".")[1] for m in tap.seen}
    assert {"cmd", "result"} <= kinds, kinds
    assert len(tap.seen) >= 4 * N  # a create and three results per workflow

    inbox = settings.subjects.inbox_stream
    stored = (await nc.jetstream().stream_info(inbox)).state.last_seq
    rng = random.Random(7)
    for _ in range(2):
        again = list(tap.seen)
        rng.shuffle(again)
        await tap.republish(again)
    # Stored, every one: JetStream's duplicate window did not catch them.
    assert (await nc.jetstream().stream_info(inbox)).state.last_seq == stored + 2 * len(tap.seen)
    await drained(nc, settings)
    await asyncio.sleep(0.5)  # anything a copy set off would be published by now

    assert await snapshot(client, ids) == before
    assert dict(demo_worker.runs) == runs, "a copy made a worker run a task again"
    checked, violations = await check_all(client, ids)
    assert (checked, violations) == (N, [])
    dlq = await nc.jetstream().stream_info(settings.subjects.dlq_stream)
    assert dlq.state.messages == 0, "a copy was dead-lettered instead of recognised"


async def test_every_inbox_message_copied_twice_while_the_workflows_run(
        tap: Tap, demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    tap.echo = 2
    ids = await create_all(client, "live")
    await wait_terminal(client, ids, timeout=30)
    await tap.settle()
    await drained(nc, settings)
    checked, violations = await check_all(client, ids)
    assert (checked, violations) == (N, [])
    for wid in ids:
        status = (await client.get(wid)).status
        assert status is not None and status.state == WorkflowState.COMPLETED, wid
    assert set(demo_worker.runs.values()) == {1}, demo_worker.runs.most_common(3)
