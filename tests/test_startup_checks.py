"""Start-up checks: what exists in NATS is adopted when usable, refused loudly when not."""

from __future__ import annotations

import asyncio
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
from contracts.subjects import Subjects
from natsflow._cli_common import settings_env
from orchestrator import Orchestrator
from transport.connect import NatsSettings
from transport.streams import (
    TASK_HEARTBEAT,
    Topology,
    check_consumer,
    declare_stream,
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
