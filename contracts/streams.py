"""The JetStream streams, consumers and KV buckets natsflow needs, and their declaration.

Every service declares what it uses at start-up, idempotently (create, or update when
the config changed); nobody creates them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .subjects import Subjects

__all__ = [
    "DUPLICATE_WINDOW",
    "TASK_ACK_WAIT",
    "TASK_HEARTBEAT",
    "Topology",
    "declare_stream",
    "ensure_consumer",
    "ensure_stream",
]

#: Seconds within which JetStream drops a message whose Nats-Msg-Id it has seen.
DUPLICATE_WINDOW = 120.0
#: Seconds a worker may stay silent before its task is redelivered.
TASK_ACK_WAIT = 30.0
#: How often a worker sends an in-progress ack while a task runs.
TASK_HEARTBEAT = 10.0
#: Seconds an engine message may stay unacked before it is redelivered.
ENGINE_ACK_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Topology:
    """Stream, consumer and bucket configs of one deployment.

    Args:
        subjects: The deployment's names.
        replicas: JetStream replicas of every stream and bucket (3 in a cluster).
        events_max_age: Seconds status events are kept.
    """

    subjects: Subjects
    replicas: int = 1
    events_max_age: float = 7 * 24 * 3600

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

    def outputs_kv(self) -> KeyValueConfig:
        """Map item outputs, one key per item."""
        return KeyValueConfig(bucket=self.subjects.outputs_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE, direct=True)

    def blobs_store(self) -> ObjectStoreConfig:
        """Large outputs (a big map's joined output), chunked."""
        return ObjectStoreConfig(bucket=self.subjects.blobs_bucket, replicas=self.replicas,
                                 storage=StorageType.FILE)

    def idempotency_kv(self) -> KeyValueConfig:
        """Idempotency-Key digest -> workflow id, for 24 hours."""
        return KeyValueConfig(bucket=self.subjects.idempotency_bucket, history=1,
                              replicas=self.replicas, storage=StorageType.FILE,
                              ttl=24 * 3600, direct=True)

    def engine_consumer(self) -> ConsumerConfig:
        """Commands and results; shared by every orchestrator replica."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.engine_consumer, filter_subjects=s.engine_filters,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=ENGINE_ACK_WAIT,
                              max_deliver=-1, max_ack_pending=20_000, max_waiting=512)

    def timer_consumer(self) -> ConsumerConfig:
        """Durable timers; each waits as a delayed nak until due."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.timer_consumer, filter_subject=s.timer_filter,
                              ack_policy=AckPolicy.EXPLICIT, ack_wait=ENGINE_ACK_WAIT,
                              max_deliver=-1, max_ack_pending=1_000_000, max_waiting=512)

    def worker_consumer(self, task_type: str) -> ConsumerConfig:
        """Tasks of one type; shared by every worker serving it."""
        s = self.subjects
        return ConsumerConfig(durable_name=s.worker_consumer(task_type),
                              filter_subject=s.task(task_type), ack_policy=AckPolicy.EXPLICIT,
                              ack_wait=TASK_ACK_WAIT, max_deliver=-1, max_ack_pending=10_000,
                              max_waiting=512)


_NAME_IN_USE = 10058  # stream name already in use with a different configuration


async def declare_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise
        await js.update_stream(config)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream if it is missing; one that exists is left as it is.

    For services that use a stream the orchestrator owns (workers and the tasks stream):
    a worker started without ``--replicas`` must not turn an R3 deployment's streams
    into R1 ones, nor undo any other setting the orchestrator declared.
    """
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or update it to ``config``."""
    await js.add_consumer(stream, config)
