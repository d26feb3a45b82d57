"""Every subject, stream, consumer and KV bucket name natsflow uses (one home per fact).

A deployment is identified by a *prefix* (``natsflow`` unless configured), so several
independent natsflow installations -- or several tests -- can share one NATS server.

Subject scheme (``p`` is the prefix)::

    p.submit                      fire-and-forget WorkflowConfig (JetStream, INBOX stream)
    p.cmd.wf.<k>.<workflow_id>    commands for one workflow (INBOX stream, internal)
    p.cmd.batch.<batch_id>        commands for one batch (INBOX stream, internal)
    p.result.<k>.<workflow_id>    task results from workers (INBOX stream)
    p.timer.<k>.<workflow_id>     durable timers: retry backoff, timeouts (INBOX stream)
    p.sched.<schedule key>        schedule ticks: wake a schedule at its next fire time
                                  (INBOX stream, its own consumer)
    p.limit.<pool>                permit requests to the limiter (LIMITS stream, internal)
    p.task.<task_type>            tasks for workers of one type (TASKS work-queue stream)
    p.task.priority=<n>.<task_type>
                                  the same at priority n, when n is not the default (3)
    p.cancel.<workflow_id>        cancel notices for running tasks (core NATS)
    p.events.<workflow_id>.<kind>.<what>
                                  status events, e.g. p.events.<id>.workflow.completed,
                                  p.events.<id>.step.succeeded (EVENTS stream)
    p.dlq.<reason>                dead letters with a reason (DLQ stream)
    p.webhooks.<workflow_id>      webhook deliveries to make (WEBHOOKS work-queue stream)
    p.api.<group>.<operation>     request/reply API (NATS micro service ``p``)
    p.member.<member>             liveness of one orchestrator (core request, internal)

``<k>`` is the workflow's partition, :func:`partition_of` (``0`` to ``PARTITIONS - 1``):
each partition has its own durable consumers on the INBOX stream (``engine-<k>``,
``timers-<k>``), which one orchestrator at a time pulls, so the messages of one workflow
land on one replica. The forms without ``<k>`` (``p.cmd.wf.<id>``, ``p.result.<id>``,
``p.timer.<id>``) are those of natsflow before partitions: still consumed, by the shared
``engine`` and ``timers`` consumers, for messages stored before an upgrade.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from contracts.priorities import DEFAULT_PRIORITY

__all__ = ["DEFAULT_PREFIX", "PARTITIONS", "PRIORITY_TOKEN", "SERVER_SUBJECT_MARK",
           "TASK_TYPE_RE", "TOKEN_RE", "Subjects", "partition_of", "reserved_subject_rule"]

DEFAULT_PREFIX: Final = "natsflow"
#: How a task subject of a non-default priority starts after ``<prefix>.task.``.
PRIORITY_TOKEN: Final = "priority="

#: One subject token: what ids and task-type parts may contain.
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
#: A task type: one or more tokens joined by dots (``email.send``).
TASK_TYPE_RE: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
#: The first token of the NATS server's own subjects starts with this: ``$JS`` (JetStream
#: API), ``$KV`` (key-value), ``$O`` (object store), ``$SRV`` (micro services),
#: ``$SYS`` (the system account), and whatever the server adds next.
SERVER_SUBJECT_MARK: Final = "$"
#: How many partitions the engine's per-workflow work is divided into. Part of the wire
#: format: every publisher and every orchestrator of a deployment must agree on it.
PARTITIONS: Final = 8

_FNV32_OFFSET: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193


def partition_of(workflow_id: str, partitions: int = PARTITIONS) -> int:
    """The partition of a workflow: FNV-1a (32 bits) of the id's UTF-8 bytes, mod ``partitions``.

    Exactly what nats-server's subject-mapping function ``{{partition(n, i)}}`` computes
    for a one-token id (``tests/test_partitions.py`` checks one against the other), so
    any client, in any language, or the server itself, can compute it.
    """
    h = _FNV32_OFFSET
    for byte in workflow_id.encode():
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h % partitions


def _upper_name(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix).upper()


def _lower_name(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


@dataclass(frozen=True, slots=True)
class Subjects:
    """Names for one natsflow deployment.

    Args:
        prefix: The first subject token(s), e.g. ``natsflow`` or ``acme.natsflow``.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}")

    # -- streams, consumers, buckets -------------------------------------------------
    @property
    def inbox_stream(self) -> str:
        """Work-queue stream of everything the engine consumes."""
        return f"{_upper_name(self.prefix)}_INBOX"

    @property
    def tasks_stream(self) -> str:
        """Work-queue stream of tasks for workers."""
        return f"{_upper_name(self.prefix)}_TASKS"

    @property
    def events_stream(self) -> str:
        """Limits stream of status events."""
        return f"{_upper_name(self.prefix)}_EVENTS"

    @property
    def dlq_stream(self) -> str:
        """Stream of dead letters."""
        return f"{_upper_name(self.prefix)}_DLQ"

    @property
    def webhooks_stream(self) -> str:
        """Work-queue stream of webhook deliveries."""
        return f"{_upper_name(self.prefix)}_WEBHOOKS"

    @property
    def triggers_stream(self) -> str:
        """Interest stream that captures the core NATS subjects of triggers."""
        return f"{_upper_name(self.prefix)}_TRIGGERS"

    @property
    def engine_consumer(self) -> str:
        """Durable consumer shared by all orchestrators: submits, batch commands, and the
        per-workflow subjects without a partition (stored before partitions existed)."""
        return "engine"

    @property
    def timer_consumer(self) -> str:
        """Durable consumer shared by all orchestrators: timers without a partition."""
        return "timers"

    def engine_partition_consumer(self, partition: int | str) -> str:
        """Durable consumer of one partition's commands and results (one owner at a time)."""
        return f"engine-{partition}"

    def timer_partition_consumer(self, partition: int | str) -> str:
        """Durable consumer of one partition's timers (one owner at a time)."""
        return f"timers-{partition}"

    @property
    def engine_consumers(self) -> list[str]:
        """Every consumer of commands and results: the shared one, then each partition's."""
        return [self.engine_consumer, *map(self.engine_partition_consumer, range(PARTITIONS))]

    @property
    def timer_consumers(self) -> list[str]:
        """Every consumer of timers: the shared one, then each partition's."""
        return [self.timer_consumer, *map(self.timer_partition_consumer, range(PARTITIONS))]

    @property
    def schedule_consumer(self) -> str:
        """Durable consumer shared by all orchestrators for schedule ticks."""
        return "schedules"

    @property
    def limits_stream(self) -> str:
        """Work-queue stream of permit requests (docs/flow-control.md)."""
        return f"{_upper_name(self.prefix)}_LIMITS"

    @property
    def limiter_consumer(self) -> str:
        """Durable consumer shared by all orchestrators' limiters."""
        return "limiter"

    @property
    def limits_bucket(self) -> str:
        """KV bucket: limit and key (digested) -> its permits (holders, queue, bucket)."""
        return f"{_lower_name(self.prefix)}_limits"

    def limit(self, pool: str) -> str:
        """Permit requests of one limit and key (``pool``: a digest, a subject token)."""
        return f"{self.prefix}.limit.{pool}"

    @property
    def all_limits(self) -> str:
        """Subjects captured by the limits stream."""
        return f"{self.prefix}.limit.>"

    @property
    def webhook_consumer(self) -> str:
        """Durable consumer shared by all webhook deliverers."""
        return "webhooks"

    def worker_consumer(self, task_type: str, priority: int | None = None) -> str:
        """Durable consumer shared by all workers of one task type (at one priority).

        The default priority's is ``worker-<type>``; level ``n``'s is ``worker<n>-<type>``,
        which no task type's default consumer can be named.
        """
        level = "" if priority is None or priority == DEFAULT_PRIORITY else str(priority)
        return f"worker{level}-" + task_type.replace(".", "_")

    def trigger_consumer(self, namespace: str, name: str) -> str:
        """Durable consumer of one trigger, shared by all orchestrators (names and
        namespaces may hold ``-`` and ``_``: a digest of both keeps two apart)."""
        digest = hashlib.sha256(f"{namespace}\x00{name}".encode()).hexdigest()[:10]
        return f"trigger-{name}-{digest}"

    @property
    def workflows_bucket(self) -> str:
        """KV bucket: workflow id -> workflow record."""
        return f"{_lower_name(self.prefix)}_workflows"

    @property
    def members_bucket(self) -> str:
        """KV bucket: orchestrator id -> its host and pid, while it lives (a short TTL,
        renewed): who shares the partitions (see ``orchestrator.members``)."""
        return f"{_lower_name(self.prefix)}_members"

    @property
    def batches_bucket(self) -> str:
        """KV bucket: batch id -> batch record."""
        return f"{_lower_name(self.prefix)}_batches"

    @property
    def summaries_bucket(self) -> str:
        """KV bucket: workflow id -> its list line (WorkflowSummary), for the index."""
        return f"{_lower_name(self.prefix)}_summaries"

    @property
    def definitions_bucket(self) -> str:
        """KV bucket: ``<name>.<version>`` (the default namespace's) or
        ``<namespace>.<name>.<version>`` -> a stored workflow definition (immutable)."""
        return f"{_lower_name(self.prefix)}_definitions"

    @property
    def schedules_bucket(self) -> str:
        """KV bucket: ``<name>`` (the default namespace's) or ``<namespace>.<name>`` ->
        a schedule and its state."""
        return f"{_lower_name(self.prefix)}_schedules"

    @property
    def outputs_bucket(self) -> str:
        """KV bucket: ``<workflow>.<step>.<attempt>.<index>`` -> a map item's output."""
        return f"{_lower_name(self.prefix)}_outputs"

    @property
    def keys_bucket(self) -> str:
        """KV bucket: API key id -> the gateway's stored key (its hash, never the key)."""
        return f"{_lower_name(self.prefix)}_keys"

    @property
    def secrets_bucket(self) -> str:
        """KV bucket: the orchestrator's own secrets (the result key); only it reads it."""
        return f"{_lower_name(self.prefix)}_secrets"

    @property
    def triggers_bucket(self) -> str:
        """KV bucket: ``<namespace>.<name>`` -> a trigger (see :mod:`contracts.triggers`)."""
        return f"{_lower_name(self.prefix)}_triggers"

    @property
    def trigger_stats_bucket(self) -> str:
        """KV bucket: ``<namespace>.<name>`` -> a trigger's counters."""
        return f"{_lower_name(self.prefix)}_trigger_stats"

    def kv_put(self, bucket: str, key: str) -> str:
        """The subject a KV put of ``key`` in ``bucket`` is published on."""
        return f"$KV.{bucket}.{key}"

    @property
    def blobs_bucket(self) -> str:
        """Object store: outputs too large for a record or a message."""
        return f"{_lower_name(self.prefix)}_blobs"

    @property
    def idempotency_bucket(self) -> str:
        """KV bucket: idempotency key digest -> workflow id (with a TTL)."""
        return f"{_lower_name(self.prefix)}_idempotency"

    @property
    def service_name(self) -> str:
        """Name of the orchestrator's NATS micro service."""
        return _lower_name(self.prefix)

    @property
    def index_service_name(self) -> str:
        """Name of the index's NATS micro service (``workflow.list`` and ``workflow.bulk``)."""
        return f"{self.service_name}-index"

    def api_service(self, operation: str) -> str:
        """Name of the micro service that answers the API ``operation`` (see
        :mod:`contracts.operations`)."""
        # Imported here: the operation table is built of models that import this module.
        from .operations import INDEX_OPERATIONS

        return self.index_service_name if operation in INDEX_OPERATIONS else self.service_name

    # -- subjects --------------------------------------------------------------------
    @property
    def submit(self) -> str:
        """Fire-and-forget subject for a WorkflowConfig."""
        return f"{self.prefix}.submit"

    def workflow_command(self, workflow_id: str, partition: int | str | None = None) -> str:
        """Commands for one workflow, on its partition (:func:`partition_of`; give
        ``partition`` only to build a template, such as the AsyncAPI's)."""
        k = partition_of(workflow_id) if partition is None else partition
        return f"{self.prefix}.cmd.wf.{k}.{workflow_id}"

    def member_ping(self, member: str) -> str:
        """Core NATS request subject one live orchestrator answers (``member``: its key in
        the members bucket): "no responders" says it is gone before its key ages out."""
        return f"{self.prefix}.member.{member}"

    def batch_command(self, batch_id: str) -> str:
        """Commands for one batch."""
        return f"{self.prefix}.cmd.batch.{batch_id}"

    def result(self, workflow_id: str, partition: int | str | None = None) -> str:
        """Where workers publish results for one workflow, on its partition (``partition``:
        as for :meth:`workflow_command`). A worker answers on the ``reply_to`` its task names, so it
        never computes this."""
        k = partition_of(workflow_id) if partition is None else partition
        return f"{self.prefix}.result.{k}.{workflow_id}"

    def timer(self, workflow_id: str, partition: int | str | None = None) -> str:
        """Durable timers for one workflow, on its partition (``partition``: as for
        :meth:`workflow_command`)."""
        k = partition_of(workflow_id) if partition is None else partition
        return f"{self.prefix}.timer.{k}.{workflow_id}"

    def schedule_tick(self, key: str) -> str:
        """Ticks of one schedule (``key``: see ``contracts.schedules.schedule_key``)."""
        return f"{self.prefix}.sched.{key}"

    def task(self, task_type: str, priority: int | None = None) -> str:
        """Work queue of one task type (at one priority: None is the default).

        The default priority's tasks are on ``<prefix>.task.<type>``, as before priorities
        existed; level ``n``'s on ``<prefix>.task.priority=<n>.<type>``: ``=`` is in no
        task type, so that subject is no other task type's.
        """
        if priority is None or priority == DEFAULT_PRIORITY:
            return f"{self.prefix}.task.{task_type}"
        return f"{self.prefix}.task.{PRIORITY_TOKEN}{priority}.{task_type}"

    def cancel(self, workflow_id: str) -> str:
        """Cancel notices for running tasks of one workflow."""
        return f"{self.prefix}.cancel.{workflow_id}"

    def event(self, workflow_id: str, event_type: str) -> str:
        """One status event; ``event_type`` is e.g. ``step.succeeded``."""
        return f"{self.prefix}.events.{workflow_id}.{event_type}"

    def events_of(self, workflow_id: str = "*", event_type: str = ">") -> str:
        """A filter over events, by workflow id and/or type, with NATS wildcards."""
        return f"{self.prefix}.events.{workflow_id}.{event_type}"

    def events_matching(self, pattern: str) -> str:
        """The events-stream filter for ``pattern``, a subject-style filter over
        ``<workflow_id>.<kind>.<what>`` (e.g. ``*.workflow.failed``, ``wf1.>``).

        Raises:
            ValueError: ``pattern`` is not tokens, ``*`` and a final ``>`` joined by dots.
        """
        tokens = pattern.split(".")
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            if not (TOKEN_RE.match(token) or token == "*" or (token == ">" and last)):
                raise ValueError(f"invalid event filter {pattern!r}: each dot-separated "
                                 "token is letters, digits, '_', '-', '*', or a final '>'")
        return f"{self.prefix}.events.{pattern}"

    def dlq(self, reason: str) -> str:
        """A dead letter with its reason code."""
        return f"{self.prefix}.dlq.{reason}"

    def webhook(self, workflow_id: str) -> str:
        """Webhook deliveries of one workflow's events."""
        return f"{self.prefix}.webhooks.{workflow_id}"

    def api(self, operation: str) -> str:
        """A request/reply API endpoint, e.g. ``workflow.create``."""
        return f"{self.prefix}.api.{operation}"

    # -- wildcards used by stream and consumer definitions ---------------------------
    @property
    def inbox_subjects(self) -> list[str]:
        """Subjects captured by the inbox stream."""
        # Exactly what some consumer reads: a subject no consumer reads would be stored
        # in the work queue for ever (a publish to one is refused instead).
        partitioned = [f for k in range(PARTITIONS)
                       for f in (*self.engine_partition_filters(k), self.timer_partition_filter(k))]
        return [*self.engine_filters, self.timer_filter, *partitioned, self.schedule_filter]

    @property
    def engine_filters(self) -> list[str]:
        """Subjects the shared engine consumer reads (none a partition's: the INBOX is a
        work queue, whose consumers may not overlap)."""
        p = self.prefix
        return [f"{p}.submit", f"{p}.cmd.batch.*", f"{p}.cmd.wf.*", f"{p}.result.*"]

    @property
    def timer_filter(self) -> str:
        """Subjects the shared timer consumer reads (timers without a partition)."""
        return f"{self.prefix}.timer.*"

    def engine_partition_filters(self, partition: int) -> list[str]:
        """Subjects one partition's engine consumer reads."""
        p = self.prefix
        return [f"{p}.cmd.wf.{partition}.*", f"{p}.result.{partition}.*"]

    def timer_partition_filter(self, partition: int) -> str:
        """Subjects one partition's timer consumer reads."""
        return f"{self.prefix}.timer.{partition}.*"

    @property
    def schedule_filter(self) -> str:
        """Subjects the schedule consumer reads."""
        return f"{self.prefix}.sched.>"

    @property
    def all_tasks(self) -> str:
        """Subjects captured by the tasks stream."""
        return f"{self.prefix}.task.>"

    @property
    def all_cancels(self) -> str:
        """Every cancel notice."""
        return f"{self.prefix}.cancel.>"

    @property
    def all_events(self) -> str:
        """Subjects captured by the events stream."""
        return f"{self.prefix}.events.>"

    @property
    def all_dlq(self) -> str:
        """Subjects captured by the dead-letter stream."""
        return f"{self.prefix}.dlq.>"

    @property
    def all_webhooks(self) -> str:
        """Subjects captured by the webhooks stream."""
        return f"{self.prefix}.webhooks.>"

    def is_internal(self, subject: str) -> bool:
        """True for the deployment's own machinery: every subject under the prefix but
        the public ones (``submit`` and ``api.*``). (Built-in steps refuse more: see
        :func:`reserved_subject_rule`.)"""
        head = self.prefix + "."
        if not subject.startswith(head):
            return False
        rest = subject[len(head):]
        return rest != "submit" and not rest.startswith("api.")

    def kind_of(self, subject: str) -> tuple[str, str]:
        """Split an inbox subject into (kind, key).

        ``kind`` is one of ``submit``, ``wf``, ``batch``, ``result``, ``timer``; ``key``
        is the workflow or batch id (empty for ``submit``).

        Raises:
            ValueError: the subject is not an inbox subject of this prefix.
        """
        head = self.prefix + "."
        if not subject.startswith(head):
            raise ValueError(f"subject {subject!r} is outside prefix {self.prefix!r}")
        rest = subject[len(head) :].split(".")
        if rest == ["submit"]:
            return "submit", ""
        if len(rest) == 3 and rest[0] == "cmd" and rest[1] in ("wf", "batch"):
            return rest[1], rest[2]
        if len(rest) == 4 and rest[:2] == ["cmd", "wf"] and _is_partition(rest[2]):
            return "wf", rest[3]
        if len(rest) == 2 and rest[0] in ("result", "timer"):
            return rest[0], rest[1]
        if len(rest) == 3 and rest[0] in ("result", "timer") and _is_partition(rest[1]):
            return rest[0], rest[2]
        raise ValueError(f"subject {subject!r} is not an inbox subject")


def _is_partition(token: str) -> bool:
    return token.isascii() and token.isdigit() and int(token) < PARTITIONS


def reserved_subject_rule(subjects: Subjects, subject: str) -> str | None:
    """Why a built-in step may not use ``subject`` by default, or None if it may.

    The one deny list of ``request`` and ``publish`` steps (an operator's allowlist can
    open parts of it, see :mod:`contracts.egress`). A step runs with the orchestrator's
    NATS rights, so it must not drive the server or natsflow itself.

    Returns:
        ``server-subject`` for the server's own subjects (``$JS.>``, ``$KV.>``, ``$O.>``,
        ``$SRV.>``, ``$SYS.>``, any ``$...``); ``natsflow-subject`` for every subject of
        the deployment (``<prefix>.>``, its public API included).
    """
    if subject.startswith(SERVER_SUBJECT_MARK):
        return "server-subject"
    if subject == subjects.prefix or subject.startswith(subjects.prefix + "."):
        return "natsflow-subject"
    return None
