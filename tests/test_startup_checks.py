"""Start-up checks: what exists in NATS is adopted when usable, refused loudly when not."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys

import pytest
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from contracts.errors import ConfigMismatch
from contracts.subjects import Subjects, partition_of
from natsflow._cli_common import settings_env
from orchestrator import Orchestrator
from transport.connect import NatsSettings
from transport.streams import (
    TASK_HEARTBEAT,
    Topology,
    check_consumer,
    declare_stream,
    ensure_consumer,
    reconcile_stream,
)

SUBJECTS = Subjects("checks")


def test_an_existing_stream_never_loses_replicas() -> None:
    wanted = Topology(SUBJECTS, replicas=1).tasks()
    have = Topology(SUBJECTS, replicas=3).tasks()
    assert reconcile_stream(wanted, have).num_replicas == 3
    assert reconcile_stream(have, wanted).num_replicas == 3  # scaling up is fine


def test_a_stream_with_another_retention_or_storage_is_refused() -> None:
    wanted = Topology(SUBJECTS).inbox()
    for field, value in (("retention", RetentionPolicy.LIMITS), ("storage", StorageType.MEMORY)):
        have = StreamConfig(name=wanted.name, subjects=wanted.subjects, **{field: value})
        with pytest.raises(ConfigMismatch) as caught:
            reconcile_stream(wanted, have)
        assert caught.value.field == field
        assert caught.value.details is not None and caught.value.details["stream"] == wanted.name


def test_a_worker_consumer_whose_ack_wait_a_heartbeat_cannot_cover_is_refused() -> None:
    wanted = Topology(SUBJECTS).worker_consumer("demo.echo")
    ok = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=TASK_HEARTBEAT * 3)
    check_consumer("TASKS", wanted, ok, heartbeat=TASK_HEARTBEAT)
    with pytest.raises(ConfigMismatch, match=r"not above the 10\.0s heartbeat"):
        check_consumer("TASKS", wanted, ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                       ack_wait=TASK_HEARTBEAT),
                       heartbeat=TASK_HEARTBEAT)
    with pytest.raises(ConfigMismatch, match="explicit acks"):
        check_consumer("TASKS", wanted, ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=30))


async def test_the_orchestrator_refuses_an_inbox_it_cannot_use(settings: NatsSettings,
                                                               nc: Client) -> None:
    js = nc.jetstream()
    wrong = Topology(settings.subjects).inbox()
    wrong.retention = RetentionPolicy.LIMITS
    await js.add_stream(wrong)
    with pytest.raises(ConfigMismatch) as caught:
        await Orchestrator(settings, nc=nc, builtins=False).start()
    assert caught.value.field == "retention"
    assert f"stream {wrong.name} has retention limits, natsflow needs workqueue" in str(
        caught.value)
    # As a user sees it: one line naming the problem, and a non-zero exit.
    env = {**os.environ, **settings_env(settings)}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "natsflow.cli", "orchestrator"], env=env,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "error[config-mismatch]: stream" in done.stderr


async def test_a_bucket_with_another_storage_is_refused(settings: NatsSettings,
                                                        nc: Client) -> None:
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=settings.subjects.workflows_bucket,
                                             storage=StorageType.MEMORY))
    with pytest.raises(ConfigMismatch) as caught:
        await Orchestrator(settings, nc=nc, builtins=False).start()
    assert caught.value.field == "storage"
    assert settings.subjects.workflows_bucket in str(caught.value)


async def test_redeclaring_keeps_what_is_there_when_it_is_usable(settings: NatsSettings,
                                                                 nc: Client) -> None:
    js = nc.jetstream()
    t = Topology(settings.subjects)
    await declare_stream(js, t.tasks())
    await declare_stream(js, t.tasks())  # again: no error, same stream
    async with Orchestrator(settings, nc=nc, builtins=False):
        pass
    async with Orchestrator(settings, nc=nc, builtins=False):  # a second start adopts all
        pass
    info = await js.stream_info(settings.subjects.tasks_stream)
    assert info.config.retention == RetentionPolicy.WORK_QUEUE


async def test_an_engine_consumer_kept_on_file_is_made_again_in_memory_without_losing_a_message(
        settings: NatsSettings, nc: Client) -> None:
    # natsflow before this kept the engine's consumers' state on file; the server cannot
    # change a consumer's storage in place, so the orchestrator deletes and makes it
    # again: on the INBOX, a work queue, the messages not yet acknowledged are all still
    # stored and come again; the acknowledged are gone and do not.
    js = nc.jetstream()
    t = Topology(settings.subjects)
    s = settings.subjects
    await declare_stream(js, t.inbox())
    old = dataclasses.replace(t.engine_partition_consumer(3), mem_storage=None)
    await js.add_consumer(s.inbox_stream, old)
    wid = next(f"w{i}" for i in range(1000) if partition_of(f"w{i}") == 3)
    for n in range(3):
        await js.publish(s.workflow_command(wid), f"cmd {n}".encode())
    sub = await js.pull_subscribe_bind(old.durable_name, s.inbox_stream)
    first, _ = await sub.fetch(2, timeout=5)
    await first.ack()  # done: deleted from the work queue
    # (the info's round trip comes after the ack's: it has been taken)
    assert (await js.consumer_info(s.inbox_stream, old.durable_name)).config.mem_storage in (
        None, False)
    await ensure_consumer(js, s.inbox_stream, t.engine_partition_consumer(3))
    info = await js.consumer_info(s.inbox_stream, old.durable_name)
    assert info.config.mem_storage is True
    again = await js.pull_subscribe_bind(old.durable_name, s.inbox_stream)
    got = await again.fetch(5, timeout=2)
    assert [m.data for m in got] == [b"cmd 1", b"cmd 2"]  # taken and not acked, and never taken
    # A consumer already in memory is left as it is (no second delete).
    before = info.created
    await ensure_consumer(js, s.inbox_stream, t.engine_partition_consumer(3))
    assert (await js.consumer_info(s.inbox_stream, old.durable_name)).created == before
