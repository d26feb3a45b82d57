"""The JetStream streams, consumers and KV buckets natsflow needs, and their declaration.

Every service declares what it uses at start-up, idempotently (create, or update when
the config changed); nobody creates them by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from contracts.errors import ConfigMismatch
from contracts.subjects import Subjects
from transport.transient import is_transient

__all__ = [
    "DECLARE_PATIENCE",
    "DUPLICATE_WINDOW",
    "ENGINE_ACK_WAIT",
    "TASK_ACK_WAIT",
    "TASK_HEARTBEAT",
    "WEBHOOK_ACK_WAIT",
    "Topology",
    "check_consumer",
    "declare_bucket",
    "declare_stream",
    "ensure_bucket",
    "ensure_consumer",
    "ensure_stream",
    "patiently",
    "reconcile_stream",
]

log = logging.getLogger("natsflow.streams")

T = TypeVar("T")

#: Seconds within which JetStream drops a message whose Nats-Msg-Id it has seen.
DUPLICATE_WINDOW = 120.0
#: Seconds a worker may stay silent before its task is redelivered.
TASK_ACK_WAIT = 30.0
#: How often a worker sends an in-progress ack while a task runs.
TASK_HEARTBEAT = 10.0
#: Seconds an engine message may stay unacked before it is redelivered.
ENGINE_ACK_WAIT = 30.0
#: Seconds a service retries its start-up declarations while the cluster is settling.
DECLARE_PATIENCE = 120.0
#: Longest pause between two of those attempts.
DECLARE_MAX_PAUSE = 5.0
#: Seconds a webhook delivery may go without news from its deliverer (it sends an
#: in-progress ack every third of this while it waits or POSTs) before it is redelivered.
WEBHOOK_ACK_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Topology:
    """Stream, consumer and bucket configs of one deployment.

    Args:
        subjects: The deployment's names.
        replicas: JetStream replicas of every stream and bucket (3 in a cluster).
        events_max_age: Seconds status events are kept.
        engine_ack_wait: Seconds an engine or timer message taken by an orchestrator may
            stay unacked before it is redelivered (to any replica): how long the work in
            hand of a crashed orchestrator waits.
        task_ack_wait: Seconds a worker may stay silent on a task before it is
            redelivered: how long the task of a crashed worker waits. Keep it above
            the heartbeat interval (``TASK_HEARTBEAT``).
    """

    subjects: Subjects
    replicas: int = 1
    events_max_age: float = 7 * 24 * 3600
    engine_ack_wait: float = ENGINE_ACK_WAIT
    task_ack_wait: float = TASK_ACK_WAIT

    def inbox(self) -> StreamConfig:
        """Everything the engine consumes: submits, commands, results, timers."""
        s = self.subjects
        return StreamConfig(name=s.inbox_stream, subjects=s.inbox_subjects,
                            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW)

    def tasks(self) -> StreamConfig:
        """Tasks for workers, one subject per task type."""
        s = self.subjects
        return StreamConfig(name=s.tasks_stream, subjects=[s.all_tasks],
                            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW)

    def events(self) -> StreamConfig:
        """Status events, kept ``events_max_age`` seconds."""
        s = self.subjects
        return StreamConfig(name=s.events_stream, subjects=[s.all_events],
                            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW,
                            max_age=self.events_max_age, allow_direct=True)

    def dlq(self) -> StreamConfig:
        """Dead letters, kept 30 days."""
        s = self.subjects
        return StreamConfig(name=s.dlq_stream, subjects=[s.all_dlq],
                            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                            num_replicas=self.replicas, max_age=30 * 24 * 3600)

    def webhooks(self) -> StreamConfig:
        """Webhook deliveries to make, one subject per workflow."""
        s = self.subjects
        return StreamConfig(name=s.webhooks_stream, subjects=[s.all_webhooks],
                            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW)

    def limits(self) -> StreamConfig:
        """Permit requests to the limiter (a work queue; docs/flow-control.md)."""
        s = self.subjects
        return StreamConfig(name=s.limits_stream, subjects=[s.all_limits],
                            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW)

    def limits_kv(self) -> KeyValueConfig:
        """Limit and key -> its permits (holders, queue; a rate limit's next free time)."""
        return KeyValueConfig(bucket=self.subjects.limits_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def limiter_consumer(self) -> ConsumerConfig:
        """Permit requests; shared by every orchestrator's limiter."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.limiter_consumer, filter_subject=s.all_limits,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=self.engine_ack_wait,
                              max_deliver=-1, max_ack_pending=20_000, max_waiting=512)

    def workflows_kv(self) -> KeyValueConfig:
        """Workflow id -> record."""
        return KeyValueConfig(bucket=self.subjects.workflows_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def batches_kv(self) -> KeyValueConfig:
        """Batch id -> record."""
        return KeyValueConfig(bucket=self.subjects.batches_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def summaries_kv(self) -> KeyValueConfig:
        """Workflow id -> WorkflowSummary: what the list index is built from."""
        return KeyValueConfig(bucket=self.subjects.summaries_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def definitions_kv(self) -> KeyValueConfig:
        """Workflow definitions, one immutable key per version."""
        return KeyValueConfig(bucket=self.subjects.definitions_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def schedules_kv(self) -> KeyValueConfig:
        """Schedules and their state, one key per schedule."""
        return KeyValueConfig(bucket=self.subjects.schedules_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def outputs_kv(self) -> KeyValueConfig:
        """Map item outputs, one key per item."""
        return KeyValueConfig(bucket=self.subjects.outputs_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def keys_kv(self) -> KeyValueConfig:
        """The gateway's API keys, one key per key id (see :mod:`contracts.keys`)."""
        return KeyValueConfig(bucket=self.subjects.keys_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def secrets_kv(self) -> KeyValueConfig:
        """The orchestrator's secrets (the result key of :mod:`orchestrator.tokens`)."""
        return KeyValueConfig(bucket=self.subjects.secrets_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE)

    def members_kv(self, ttl: float) -> KeyValueConfig:
        """The live orchestrators; a key lives ``ttl`` seconds after its last renewal.
        On file, as the rest: a member key must outlive a server restart (in memory, every
        member's would vanish at once, and the shares computed before with them)."""
        return KeyValueConfig(bucket=self.subjects.members_bucket, history=1, ttl=ttl,
                              replicas=self.replicas, storage=StorageType.FILE)

    def blobs_store(self) -> ObjectStoreConfig:
        """Large outputs (a big map's joined output), chunked."""
        return ObjectStoreConfig(bucket=self.subjects.blobs_bucket, replicas=self.replicas,
                                 storage=StorageType.FILE)

    def idempotency_kv(self) -> KeyValueConfig:
        """Idempotency-Key digest -> workflow id, for 24 hours."""
        return KeyValueConfig(bucket=self.subjects.idempotency_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE,
                              ttl=24 * 3600, direct=True)

    def triggers(self, subjects: list[str]) -> StreamConfig:
        """The core NATS subjects of triggers (``subjects``: their :func:`cover
        <contracts.triggers.cover>`), each message kept until every trigger whose
        consumer wants it has taken it (interest), at most a week."""
        return StreamConfig(name=self.subjects.triggers_stream, subjects=subjects,
                            retention=RetentionPolicy.INTEREST, storage=StorageType.FILE,
                            num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW,
                            max_age=7 * 24 * 3600)

    def triggers_kv(self) -> KeyValueConfig:
        """Triggers, one key per ``<namespace>.<name>``."""
        return KeyValueConfig(bucket=self.subjects.triggers_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def trigger_stats_kv(self) -> KeyValueConfig:
        """Each trigger's counters, summed over the orchestrators."""
        return KeyValueConfig(bucket=self.subjects.trigger_stats_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def trigger_consumer(self, namespace: str, name: str, *, subject: str,
                         deliver_all: bool = True) -> ConsumerConfig:
        """One trigger's messages; shared by every orchestrator. Named as well as
        durable, so it is created on a subject that names its filter."""
        consumer = self.subjects.trigger_consumer(namespace, name)
        return ConsumerConfig(durable_name=consumer, name=consumer, filter_subject=subject,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=self.engine_ack_wait,
                              deliver_policy=(DeliverPolicy.ALL if deliver_all
                                              else DeliverPolicy.NEW),
                              max_deliver=-1, max_ack_pending=10_000, max_waiting=512)

    def engine_consumer(self) -> ConsumerConfig:
        """Commands and results; shared by every orchestrator replica."""
        s = self.subjects
        return self._engine_config(s.engine_consumer, s.engine_filters)

    def timer_consumer(self) -> ConsumerConfig:
        """Durable timers; each waits as a delayed nak until due."""
        s = self.subjects
        return self._timer_config(s.timer_consumer, s.timer_filter)

    def engine_partition_consumer(self, partition: int) -> ConsumerConfig:
        """Commands and results of one partition; pulled by the orchestrator owning it."""
        s = self.subjects
        return self._engine_config(s.engine_partition_consumer(partition),
                                   s.engine_partition_filters(partition))

    def timer_partition_consumer(self, partition: int) -> ConsumerConfig:
        """Timers of one partition; each waits as a delayed nak until due."""
        s = self.subjects
        return self._timer_config(s.timer_partition_consumer(partition),
                                  s.timer_partition_filter(partition))

    # The engine's and the timers' consumers keep their state in memory (mem_storage).
    # On the INBOX, a work queue, that state says nothing the stream does not: an ack
    # deletes the message, so what is stored is exactly what is not yet done. A server
    # restart that loses the state (a single server; a cluster keeps it on its peers)
    # loses no message: the orchestrator declares the consumers again, and every
    # message still stored is delivered again at once (timers are parked again, inputs
    # decided again, as after any redelivery). What it saves: the server writes a file
    # consumer's state up to ten times a second per consumer (an fsync each with
    # sync_interval always), 18 consumers here (bench/README.md, "One loop for every
    # owned partition, and the consumers' state in memory").

    def _engine_config(self, name: str, filters: list[str]) -> ConsumerConfig:
        return ConsumerConfig(durable_name=name, filter_subjects=filters,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=self.engine_ack_wait,
                              max_deliver=-1, max_ack_pending=20_000, max_waiting=512,
                              mem_storage=True)

    def _timer_config(self, name: str, filter_subject: str) -> ConsumerConfig:
        return ConsumerConfig(durable_name=name, filter_subject=filter_subject,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=self.engine_ack_wait,
                              max_deliver=-1, max_ack_pending=1_000_000, max_waiting=512,
                              mem_storage=True)

    def schedule_consumer(self) -> ConsumerConfig:
        """Schedule ticks; each waits as a delayed nak until due, like a timer."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.schedule_consumer, filter_subject=s.schedule_filter,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=self.engine_ack_wait,
                              max_deliver=-1, max_ack_pending=100_000, max_waiting=512)

    def webhook_consumer(self) -> ConsumerConfig:
        """Webhook deliveries; shared by every deliverer. Deliveries are counted, and
        bounded, by the deliverer itself (it dead-letters what it gives up on)."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.webhook_consumer, filter_subject=s.all_webhooks,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=WEBHOOK_ACK_WAIT,
                              max_deliver=-1, max_ack_pending=10_000, max_waiting=512)

    def worker_consumer(self, task_type: str, priority: int | None = None) -> ConsumerConfig:
        """Tasks of one type (at one priority; None: the default); shared by every
        worker serving it."""
        s = self.subjects
        name = s.worker_consumer(task_type, priority)
        # Named as well as durable: it is then created on a subject that names its
        # filter, which a worker's permissions pin (contracts.permissions), so a worker
        # cannot point its consumer at another task type's tasks.
        return ConsumerConfig(durable_name=name, name=name,
                              filter_subject=s.task(task_type, priority),
                              ack_policy=AckPolicy.EXPLICIT,
                              ack_wait=self.task_ack_wait, max_deliver=-1, max_ack_pending=10_000,
                              max_waiting=512)


_NAME_IN_USE = 10058  # stream name already in use with a different configuration


def _value(v: object) -> object:
    return getattr(v, "value", v)


def reconcile_stream(wanted: StreamConfig, have: StreamConfig) -> StreamConfig:
    """The config to apply to an existing stream: ``wanted``, but never fewer replicas.

    A deployment made with ``--replicas 3`` stays R3 when a service started without it
    declares the stream again (a worker, say): scaling down would drop copies silently.

    Raises:
        ConfigMismatch: the stream differs in a way that cannot be changed in place
            (retention, storage) or that natsflow cannot work with (missing subjects).
    """
    where = {"stream": wanted.name}
    for field in ("retention", "storage"):
        want, got = _value(getattr(wanted, field)), _value(getattr(have, field))
        if want is not None and got is not None and want != got:
            raise ConfigMismatch(
                f"stream {wanted.name} has {field} {got}, natsflow needs {want}; it cannot "
                f"be changed in place (move the data, or use another NATSFLOW_PREFIX)",
                field=field, details={**where, "needed": want, "found": got})
    missing = sorted(set(wanted.subjects or []) - set(have.subjects or []))
    if missing and have.sealed:
        raise ConfigMismatch(f"stream {wanted.name} is sealed without subjects {missing}",
                             field="subjects", details={**where, "needed": missing})
    replicas = max(wanted.num_replicas or 1, have.num_replicas or 1)
    return dataclasses.replace(wanted, num_replicas=replicas)


async def declare_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config`` (see reconcile_stream).

    Raises:
        ConfigMismatch: the existing stream cannot be made fit.
    """
    try:
        await js.add_stream(config)
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise
    assert config.name is not None
    have = (await js.stream_info(config.name)).config
    await js.update_stream(reconcile_stream(config, have))


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream if it is missing; one that exists is left as it is.

    For services that use a stream the orchestrator owns (workers and the tasks stream):
    a worker started without ``--replicas`` must not turn an R3 deployment's streams
    into R1 ones, nor undo any other setting the orchestrator declared. It looks first
    and creates only what is missing: with per-role permissions a worker may look at the
    stream but not create it, and waits (see :func:`patiently`) for the orchestrator to.
    """
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Bind to the KV bucket, creating it (see :func:`declare_bucket`) only if missing.

    For services that read a bucket the orchestrator owns (the index and the summaries):
    with per-role permissions they may read it but not create it, and wait for it.
    """
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        return await declare_bucket(js, config)


async def declare_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the KV bucket, or bind to an existing one if natsflow can use it.

    An existing bucket is left as it is (its replicas too), unless it cannot work: a
    different storage type, or history below what natsflow needs.

    Raises:
        ConfigMismatch: the existing bucket cannot be used.
    """
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise
    have = (await js.stream_info(f"KV_{config.bucket}")).config
    where = {"bucket": config.bucket}
    want_storage, got_storage = _value(config.storage), _value(have.storage)
    if want_storage is not None and got_storage != want_storage:
        raise ConfigMismatch(f"KV bucket {config.bucket} has storage {got_storage}, natsflow "
                             f"needs {want_storage}", field="storage",
                             details={**where, "needed": want_storage, "found": got_storage})
    if (have.max_msgs_per_subject or 1) < (config.history or 1):
        raise ConfigMismatch(f"KV bucket {config.bucket} keeps history "
                             f"{have.max_msgs_per_subject}, natsflow needs {config.history}",
                             field="history", details=where)
    return await js.key_value(config.bucket)


def check_consumer(stream: str, wanted: ConsumerConfig, have: ConsumerConfig,
                   *, heartbeat: float | None = None) -> None:
    """Raise if a consumer natsflow declared is not what it needs.

    Raises:
        ConfigMismatch: explicit acks missing, or an ack wait a heartbeat cannot cover.
    """
    where = {"stream": stream, "consumer": wanted.durable_name}
    if _value(have.ack_policy) != _value(AckPolicy.EXPLICIT):
        raise ConfigMismatch(f"consumer {wanted.durable_name} on {stream} does not use "
                             f"explicit acks", field="ack_policy", details=where)
    if heartbeat is not None and (have.ack_wait or 0) <= heartbeat:
        raise ConfigMismatch(
            f"consumer {wanted.durable_name} on {stream} has ack wait {have.ack_wait}s, not "
            f"above the {heartbeat}s heartbeat: running tasks would be redelivered",
            field="ack_wait", details={**where, "heartbeat": heartbeat})


#: nats-server's error code for a consumer whose storage (file or memory) would change.
STORAGE_NOT_UPDATABLE = 10012


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig, *,
                          heartbeat: float | None = None) -> None:
    """Create the durable consumer, or update it to ``config``; then check it.

    A consumer whose state is kept in the other storage (one an earlier natsflow made
    with its state on file) cannot be updated: it is deleted and made again, which
    loses no message on a work-queue stream, the only kind natsflow asks this of (what
    was acknowledged is gone from the stream, what was not is delivered again).

    Raises:
        ConfigMismatch: the consumer still is not fit (see check_consumer).
    """
    try:
        info = await js.add_consumer(stream, config)
    except nats.js.errors.APIError as exc:
        if exc.err_code != STORAGE_NOT_UPDATABLE or config.durable_name is None:
            raise
        log.warning("consumer %s on %s keeps its state in another storage; making it again",
                    config.durable_name, stream)
        await js.delete_consumer(stream, config.durable_name)
        info = await js.add_consumer(stream, config)
    check_consumer(stream, config, info.config, heartbeat=heartbeat)


async def patiently(what: str, declare: Callable[[], Awaitable[T]], *,
                    patience: float = DECLARE_PATIENCE,
                    first_pause: float = 0.25) -> T:
    """Run ``declare`` until it succeeds, retrying while the cluster is settling.

    Services started together on a cluster meet its transient states: a stream another
    service has just scaled answers ``503 insufficient resources`` for a few seconds, a
    new stream's leader is still being elected. Each failed attempt is one log line
    (no traceback); the pause doubles up to ``DECLARE_MAX_PAUSE``.

    Raises:
        Exception: what ``declare`` raised, at once if it is not transient (see
            :func:`transport.transient.is_transient`), or once ``patience`` seconds
            have passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    pause = first_pause
    attempt = 1
    while True:
        try:
            return await declare()
        except Exception as exc:
            if not is_transient(exc) or loop.time() + pause > deadline:
                raise
            log.warning("declaring %s failed (attempt %d): %s; the cluster may still be "
                        "settling, trying again in %.2gs", what, attempt,
                        str(exc) or type(exc).__name__, pause)
        await asyncio.sleep(pause)
        pause = min(2 * pause, DECLARE_MAX_PAUSE)
        attempt += 1
