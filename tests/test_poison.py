"""Poison and limits: dead letters always fit, every retry path ends, limits hold at
every entry point, and a transient fault is a line with a count, not a traceback per
message (docs/guarantees.md promise 5: "never loops forever").

These run against their own nats-server with the server's default ``max_payload``
(1 MiB), where a letter that embeds its payload escaped would not fit.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import counted, read_dead_letters, read_events, running_demo_worker, wait_for
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts.dead_letters import LETTER_RETRIES, dead_letter
from contracts.errors import ErrorInfo, PayloadTooLarge, WorkflowNotFound
from contracts.messages import DeadLetter
from contracts.models import MAX_CONFIG_BYTES, EventType
from contracts.subjects import Subjects, partition_of
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from natsflow.worker import TaskContext, Worker
from orchestrator import Orchestrator, letters
from transport.connect import NatsSettings
from transport.streams import Topology, declare_bucket, declare_stream
from transport.transient import ConditionLog

MAX_PAYLOAD = 1024 * 1024  # nats-server's default
POISON = b"\x01" * 900_000  # 5.4 MB once escaped as a JSON string


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """This module's own server, with nats-server's default max_payload."""
    store = tmp_path_factory.mktemp("nats-poison")
    server = EmbeddedNats(store, max_payload=MAX_PAYLOAD, log_file=Path(store) / "nats.log")
    server.start()
    yield server
    server.stop()


def _assert_fits(letter: DeadLetter, raw: bytes) -> None:
    """A truncated letter: the beginning of ``raw``, and what the whole of it was."""
    assert letter.truncated
    assert (letter.size, letter.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert raw.decode().startswith(letter.data)
    assert len(letter.data) > 100_000  # as much of it as fits, not a token


async def _settled(js: JetStreamContext, stream: str, consumer: str) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _wait_settled(js: JetStreamContext, stream: str, consumer: str, *,
                        timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _settled(js, stream, consumer):
        if loop.time() > deadline:
            info = await js.consumer_info(stream, consumer)
            raise AssertionError(f"{consumer} still holds messages: {info}")
        await asyncio.sleep(0.1)


def _lines(caplog: pytest.LogCaptureFixture, logger: str, *,
           level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= level]


# -- dead letters always fit ------------------------------------------------------------


def test_a_letter_never_exceeds_max_payload() -> None:
    """The builder alone: the worst escaping, a huge reason, a small server limit."""

    class Delivered:
        subject = "p.submit"
        data = POISON

    reason = ErrorInfo(code="invalid-submit", message="m" * 200_000)
    for limit in (64 * 1024, MAX_PAYLOAD, 8 * MAX_PAYLOAD):
        payload, _ = dead_letter(Delivered(), reason, time=datetime.now(UTC),
                                 max_payload=limit)
        assert len(payload) <= limit - 4096
        letter = DeadLetter.model_validate_json(payload)
        assert letter.size == len(POISON) and POISON.decode().startswith(letter.data)
        assert letter.truncated == (limit < 8 * MAX_PAYLOAD)
    small, _ = dead_letter(Delivered(), reason.model_copy(update={"message": "short"}),
                           time=datetime.now(UTC), max_payload=MAX_PAYLOAD)
    assert DeadLetter.model_validate_json(small).reason.message == "short"


@pytest.mark.parametrize("where", ["submit", "result", "command", "timer"])
async def test_an_oversized_poison_message_is_dead_lettered_once(
        where: str, engine: Orchestrator, nc: Client, settings: NatsSettings) -> None:
    s = settings.subjects
    js = nc.jetstream()
    subject = {"submit": s.submit, "result": s.result("wf1"),
               "command": s.workflow_command("wf1"), "timer": s.timer("wf1")}[where]
    await js.publish(subject, POISON)

    [(dlq_subject, letter)] = await read_dead_letters(nc, s, count=1, timeout=20)
    assert letter.subject == subject
    assert dlq_subject == s.dlq(letter.reason.code)
    assert letter.deliveries == 1
    _assert_fits(letter, POISON)
    consumer = {"submit": s.engine_consumer,
                "timer": s.timer_partition_consumer(partition_of("wf1"))}.get(
        where, s.engine_partition_consumer(partition_of("wf1")))
    await _wait_settled(js, s.inbox_stream, consumer)
    await asyncio.sleep(1.5)  # it would have been tried again by now
    assert engine.processor is not None
    assert counted(engine.processor.metrics.registry, "natsflow_dead_letters_total") == 1
    assert (await js.stream_info(s.dlq_stream)).state.messages == 1


def _config(wid: str, data: Any) -> bytes:
    return json.dumps({"id": wid, "name": "big", "input": {"x": data},
                       "steps": [{"id": "a", "task": "demo.noop"}]}).encode()


@pytest.mark.parametrize("data", ['"' * 300_000, "x" * 300_000], ids=["quotes", "plain"])
async def test_a_config_over_the_limit_on_submit_is_payload_too_large_at_once(
        data: str, engine: Orchestrator, nc: Client, settings: NatsSettings,
        client: NatsflowClient, caplog: pytest.LogCaptureFixture) -> None:
    s = settings.subjects
    raw = _config("big1", data)
    assert len(raw) > MAX_CONFIG_BYTES
    caplog.set_level(logging.INFO)
    await nc.jetstream().publish(s.submit, raw)

    [(_, letter)] = await read_dead_letters(nc, s, count=1, timeout=20)
    assert (letter.reason.code, letter.deliveries) == ("payload-too-large", 1)
    assert letter.reason.details == {"limit": MAX_CONFIG_BYTES}
    assert (letter.size, letter.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    if data.startswith('"'):  # 600 KB of quotes: 1.2 MB escaped, over max_payload
        assert letter.truncated
    await _wait_settled(nc.jetstream(), s.inbox_stream, s.engine_consumer)
    with pytest.raises(WorkflowNotFound):
        await client.get("big1")
    lines = _lines(caplog, "natsflow.orchestrator")
    assert [r.getMessage()[:30] for r in lines] == [f"dead letter from {s.submit}"[:30]]
    assert not any(r.exc_info for r in caplog.records)


# -- the same limits on every entry point -----------------------------------------------


async def test_the_api_applies_the_config_limits_to_every_request(
        engine: Orchestrator, client: NatsflowClient) -> None:
    big = "x" * (MAX_CONFIG_BYTES + 2048)
    half = "x" * (MAX_CONFIG_BYTES // 2 + 10_000)  # two of them are over the limit
    created = await client.create({"name": "w", "start": False, "steps": [
        {"id": "a", "task": "demo.echo", "input": {"message": half}}]})
    wid = created.id

    calls = {
        "signal": (lambda: client.signal(wid, "go", payload=big), None),
        "retry": (lambda: client.retry(wid, inputs={"a": {"message": big}}), None),
        "rerun (body)": (lambda: client.rerun(wid, input={"x": big}), None),
        # Each part is within its request, the config they make is not.
        "rerun (config)": (lambda: client.rerun(wid, input={"x": half}), "input"),
        "batch": (lambda: client.create_batch({
            "workflow": {"name": "b", "steps": [{"id": "a", "task": "demo.noop"}]},
            "inputs": [{"n": 1}, {"x": big}]}), "inputs.1"),
    }
    for what, (call, field) in calls.items():
        with pytest.raises(PayloadTooLarge) as caught:
            await call()
        assert caught.value.field == field, what
        assert caught.value.details is not None, what

    await client.put_definition("halfway", {"name": "halfway", "steps": [
        {"id": "a", "task": "demo.echo", "input": {"message": half}}]})
    with pytest.raises(PayloadTooLarge) as caught:
        await client.run("halfway", {"x": half})
    assert caught.value.field == "input"


# -- every retry path is bounded ----------------------------------------------------------


async def test_a_message_that_cannot_be_dead_lettered_is_dropped_after_bounded_deliveries(
        engine: Orchestrator, nc: Client, settings: NatsSettings,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(letters, "MAX_DELIVERIES", 2)
    s = settings.subjects
    js = nc.jetstream()
    await js.delete_stream(s.dlq_stream)  # no letter can be stored now
    caplog.set_level(logging.INFO)
    await js.publish(s.submit, b"not json")

    await _wait_settled(js, s.inbox_stream, s.engine_consumer)
    [dropped] = _lines(caplog, "natsflow.orchestrator", level=logging.ERROR)
    assert dropped.getMessage().startswith(
        f"dropping a message from {s.submit} after {2 + LETTER_RETRIES} deliveries")
    retried = [r for r in _lines(caplog, "natsflow.orchestrator")
               if "could not dead-letter" in r.getMessage()]
    assert len(retried) == 1  # the first; the others are counted
    assert not any(r.exc_info for r in caplog.records)


async def _worker_streams(js: JetStreamContext, s: Subjects) -> None:
    topology = Topology(s)
    await declare_stream(js, topology.inbox())
    await declare_stream(js, topology.dlq())


def _poison_worker(max_deliveries: int = 10) -> Worker:
    worker = Worker(concurrency=4, max_deliveries=max_deliveries)

    @worker.task("t.poison")
    async def never(ctx: TaskContext, data: dict[str, Any]) -> None:
        raise AssertionError("a malformed task must not run")

    return worker


async def test_an_oversized_malformed_task_is_dead_lettered_by_the_worker(
        nc: Client, settings: NatsSettings) -> None:
    s = settings.subjects
    js = nc.jetstream()
    await _worker_streams(js, s)
    async with _poison_worker().running(settings, nc=nc):
        await js.publish(s.task("t.poison"), POISON)
        [(_, letter)] = await read_dead_letters(nc, s, count=1, timeout=20)
        assert (letter.reason.code, letter.subject) == ("malformed-task", s.task("t.poison"))
        _assert_fits(letter, POISON)
        await _wait_settled(js, s.tasks_stream, s.worker_consumer("t.poison"))


async def test_a_task_the_worker_cannot_dead_letter_is_dropped_after_bounded_deliveries(
        nc: Client, settings: NatsSettings, caplog: pytest.LogCaptureFixture) -> None:
    s = settings.subjects
    js = nc.jetstream()
    await _worker_streams(js, s)
    caplog.set_level(logging.INFO)
    async with _poison_worker(max_deliveries=1).running(settings, nc=nc):
        await js.delete_stream(s.dlq_stream)
        await js.publish(s.task("t.poison"), b"not json")
        await _wait_settled(js, s.tasks_stream, s.worker_consumer("t.poison"))
    [dropped] = _lines(caplog, "natsflow.worker", level=logging.ERROR)
    assert dropped.getMessage().startswith(
        f"dropping a malformed task on {s.task('t.poison')} after {1 + LETTER_RETRIES} "
        f"deliveries")
    failed = [r for r in caplog.records if "could not dead-letter" in r.getMessage()]
    assert len(failed) == 1 and not failed[0].exc_info


# -- transient faults: a line per condition, no future left unread ------------------------


@pytest.fixture
async def bare_engine(settings: NatsSettings) -> AsyncIterator[Orchestrator]:
    """An orchestrator without its built-in steps' worker (which would declare the
    tasks stream again as soon as it is gone)."""
    orch = Orchestrator(settings, stop_grace=2.0, builtins=False)
    await orch.start()
    yield orch
    await orch.stop()


async def test_a_store_outage_is_one_log_line_and_leaves_no_future_unread(
        bare_engine: Orchestrator, nc: Client, settings: NatsSettings,
        caplog: pytest.LogCaptureFixture) -> None:
    s = settings.subjects
    js = nc.jetstream()
    topology = Topology(s)
    processor = bare_engine.processor
    assert processor is not None
    unread: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    caplog.set_level(logging.INFO)
    try:
        # The store is away, and so is the tasks stream (each create's task leaves
        # with its write, and its ack fails too).
        await js.delete_key_value(s.workflows_bucket)
        await js.delete_stream(s.tasks_stream)
        ids = [f"out{i}-{uuid.uuid4().hex[:6]}" for i in range(30)]
        for wid in ids:
            await js.publish(s.submit, json.dumps({"id": wid, "name": "outage", "steps": [
                {"id": "a", "task": "demo.noop"}]}).encode())
        redelivered = processor.metrics.redeliveries
        await wait_for(lambda: redelivered._value.get() >= 3 * len(ids), timeout=30,
                       what="the creates to fail a few times each")
        failures = [(r.getMessage(), bool(r.exc_info))
                    for r in _lines(caplog, "natsflow.orchestrator")
                    if r.getMessage().startswith("processing")]
        for record in caplog.records:  # its traceback would keep what it saw alive
            record.exc_info = None
        gc.collect()
        assert not [c for c in unread if "never retrieved" in str(c.get("message"))], unread
        [(line, traceback)] = failures  # one line, however many messages failed
        assert not traceback  # a transient fault: no traceback
        assert "NoStreamResponseError" in line

        # Back again: nothing was lost meanwhile.
        await declare_stream(js, topology.tasks())
        await declare_bucket(js, topology.workflows_kv())
        async with running_demo_worker(settings):
            events = await read_events(nc, s, terminals=len(ids), timeout=60)
        done = {e.workflow_id for e in events if e.type == EventType.WORKFLOW_COMPLETED}
        assert done == set(ids)
        gc.collect()
        assert not [c for c in unread if "never retrieved" in str(c.get("message"))], unread
    finally:
        loop.set_exception_handler(before)


def test_a_condition_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    """The counting itself, without a loop: repeats are summed up in the next line."""
    conditions = ConditionLog(logging.getLogger("natsflow.test"), window=0.05)
    caplog.set_level(logging.INFO)
    for n in range(100):
        conditions("store away", "saving %d failed", n)
    assert [r.getMessage() for r in caplog.records] == ["saving 0 failed"]
    time.sleep(0.06)
    conditions("store away", "saving %d failed", 100)
    assert caplog.records[-1].getMessage().startswith("store away: 99 more in the last")
