"""What each natsflow service may publish and subscribe to on NATS (one home).

Every permission is built here from :mod:`contracts.subjects`, so the server
configuration written by ``natsflow nats-config``, the ``nsc`` commands and the table in
docs/security.md all say the same thing. Roles::

    orchestrator  owns the deployment: its streams, consumers and buckets (JetStream
                  API on those only, never ``$JS.>``), every natsflow subject, the API
    index         reads the summaries bucket, answers workflow.list/bulk, calls the API
    gateway       an API client: <p>.api.*, the events stream, service pings
    worker        pulls the tasks of its own task types, reports results
    submitter     submits (<p>.submit, workflow.create, batch.create), reads its replies
    watcher       reads events (the events stream and live), workflow and batch status

Replies come to a per-user inbox prefix (``_INBOX.<user>``; services connect with it,
see ``NATS_INBOX_PREFIX``), and only that user may subscribe to it: nobody reads another
user's replies. Services that answer requests publish their answers through the
server's response permission (``allow_responses``), not through ``_INBOX.>``.

The deny lists repeat what the allow lists already leave out, for the subjects whose
misuse would forge natsflow's state (commands, timers, events, tasks, the orchestrator's
buckets): an operator who later widens an allow list (``>`` for a quick test) does not
open those by accident, since a deny wins over any allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from .operations import (
    BATCH_CREATE,
    BATCH_GET,
    INDEX_OPERATIONS,
    WORKFLOW_CREATE,
    WORKFLOW_GET,
    WORKFLOW_LIST,
    WORKFLOW_PAUSE,
    WORKFLOW_RESUME,
    WORKFLOW_RETRY,
    WORKFLOW_STOP,
)
from .priorities import LEVELS
from .subjects import TASK_TYPE_RE, TOKEN_RE, Subjects

__all__ = ["INBOX_ROOT", "READ_OPERATIONS", "SUBMIT_OPERATIONS", "Permissions", "Role",
           "inbox_prefix", "nsc_command", "own_streams", "permissions_for"]

#: The first token of every reply inbox (nats-py's default prefix is this alone).
INBOX_ROOT: Final = "_INBOX"
#: API operations a submitter may call.
SUBMIT_OPERATIONS: Final = (WORKFLOW_CREATE.name, BATCH_CREATE.name)
#: API operations a watcher may call (reading status; ``watch`` asks for it at the end).
READ_OPERATIONS: Final = (WORKFLOW_GET.name, WORKFLOW_LIST.name, BATCH_GET.name)
#: API operations the index calls for a bulk operation (the public API, no back door).
_BULK_OPERATIONS: Final = tuple(op.name for op in (WORKFLOW_STOP, WORKFLOW_PAUSE,
                                                   WORKFLOW_RESUME, WORKFLOW_RETRY))
_JS_API: Final = "$JS.API"


class Role(StrEnum):
    """The kinds of NATS user a deployment has."""

    ORCHESTRATOR = "orchestrator"
    INDEX = "index"
    GATEWAY = "gateway"
    WORKER = "worker"
    SUBMITTER = "submitter"
    WATCHER = "watcher"


@dataclass(frozen=True, slots=True)
class Permissions:
    """One user's permissions, as nats-server (and ``nsc``) take them.

    Attributes:
        role: What the user is.
        user: Its name (also the last token of its inbox prefix).
        inbox: The inbox prefix it connects with (``NATS_INBOX_PREFIX``).
        publish: Subjects it may publish to.
        subscribe: Subjects it may subscribe to.
        publish_deny: Subjects it may never publish to, whatever else allows it.
        subscribe_deny: Subjects it may never subscribe to.
        responses: Whether it may answer requests it received (``allow_responses``).
    """

    role: Role
    user: str
    inbox: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    responses: bool = False
    task_types: tuple[str, ...] = field(default=())


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``: its replies, and nobody else's, come under it."""
    if not TOKEN_RE.match(user):
        raise ValueError(f"invalid user name {user!r}: letters, digits, '_' and '-'")
    return f"{INBOX_ROOT}.{user}"


def _own_inbox(inbox: str) -> str:
    return f"{inbox}.>"


def _stream_admin(stream: str) -> list[str]:
    """Everything of the JetStream API on one stream of the orchestrator's own: the
    stream, its messages, direct gets, its consumers (create, info, list, next, ...)."""
    return [f"{_JS_API}.STREAM.*.{stream}", f"{_JS_API}.STREAM.MSG.*.{stream}",
            f"{_JS_API}.DIRECT.GET.{stream}", f"{_JS_API}.DIRECT.GET.{stream}.>",
            f"{_JS_API}.CONSUMER.*.{stream}", f"{_JS_API}.CONSUMER.*.{stream}.>",
            f"{_JS_API}.CONSUMER.*.*.{stream}.>", f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>"]


def _stream_info(stream: str) -> str:
    return f"{_JS_API}.STREAM.INFO.{stream}"


def _ordered_reader(stream: str) -> list[str]:
    """What nats-py's ordered consumer on ``stream`` needs: an ephemeral consumer (made
    again after a gap), its info, and flow-control answers."""
    return [_stream_info(stream), f"{_JS_API}.CONSUMER.CREATE.{stream}",
            f"{_JS_API}.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>"]


def _pulled(stream: str, consumer: str, filter_subject: str) -> list[str]:
    """A durable pull consumer of someone else's stream: created (or updated) only with
    its own filter, which the create subject pins; read; acked."""
    return [f"{_JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}",
            f"{_JS_API}.CONSUMER.INFO.{stream}.{consumer}",
            f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.ACK.{stream}.{consumer}.>"]


def _leader_elected(stream: str, consumer: str = ">") -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"


def _service(name: str) -> list[str]:
    """The subjects a NATS micro service named ``name`` listens on ($SRV discovery)."""
    return ["$SRV.*", f"$SRV.*.{name}", f"$SRV.*.{name}.>"]


def _kv_streams(s: Subjects) -> list[str]:
    return [f"KV_{b}" for b in _kv_buckets(s)]


def _kv_buckets(s: Subjects) -> list[str]:
    return [s.workflows_bucket, s.batches_bucket, s.summaries_bucket, s.definitions_bucket,
            s.outputs_bucket, s.idempotency_bucket, s.secrets_bucket, s.keys_bucket,
            s.schedules_bucket, s.triggers_bucket, s.trigger_stats_bucket, s.limits_bucket,
            s.members_bucket]


def own_streams(s: Subjects) -> list[str]:
    """Every stream the orchestrator declares (buckets and the object store included)."""
    return [s.inbox_stream, s.tasks_stream, s.events_stream, s.dlq_stream,
            s.webhooks_stream, s.triggers_stream, s.limits_stream, *_kv_streams(s),
            f"OBJ_{s.blobs_bucket}"]


def _forging_publish(s: Subjects, *, but: Sequence[str] = ()) -> list[str]:
    """Subjects whose messages only the orchestrator may write (``but`` these buckets)."""
    p = s.prefix
    return [f"{p}.cmd.>", f"{p}.timer.>", s.schedule_filter, s.all_events, s.all_tasks,
            s.all_cancels, s.all_webhooks, s.all_limits,
            *(f"$KV.{b}.>" for b in _kv_buckets(s) if b not in but),
            f"$O.{s.blobs_bucket}.>"]


def _secret_subscribe(s: Subjects) -> list[str]:
    """Subjects only the orchestrator may listen to: tasks carry their result tokens,
    results and commands are the engine's to read."""
    p = s.prefix
    return [s.all_tasks, f"{p}.result.>", f"{p}.cmd.>", f"{p}.timer.>", s.schedule_filter,
            f"{p}.submit"]


def _trigger_stream(stream: str) -> list[str]:
    """What a trigger on someone else's ``stream`` needs: its info, and its consumers'
    API (create, info, next, delete) and acks."""
    if not TOKEN_RE.match(stream):
        raise ValueError(f"invalid stream name {stream!r}")
    return [_stream_info(stream), f"{_JS_API}.CONSUMER.*.{stream}.>",
            f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.>", f"$JS.ACK.{stream}.>"]


def _orchestrator(s: Subjects, user: str, inbox: str, egress: Sequence[str],
                  trigger_streams: Sequence[str] = ()) -> Permissions:
    streams = own_streams(s)
    publish = [f"{s.prefix}.>", *(f"$KV.{b}.>" for b in _kv_buckets(s)),
               f"$O.{s.blobs_bucket}.>", f"{_JS_API}.INFO", f"{_JS_API}.STREAM.NAMES",
               *(subject for stream in streams for subject in _stream_admin(stream)),
               *(subject for stream in trigger_streams
                 for subject in _trigger_stream(stream)),
               _own_inbox(inbox), *egress]
    subscribe = [s.api(">"), s.all_cancels, s.member_ping("*"), *_service(s.service_name),
                 _own_inbox(inbox),
                 *(_leader_elected(stream) for stream in (*streams, *trigger_streams))]
    return Permissions(Role.ORCHESTRATOR, user, inbox, tuple(publish), tuple(subscribe),
                       responses=True)


def _index(s: Subjects, user: str, inbox: str) -> Permissions:
    summaries = f"KV_{s.summaries_bucket}"
    publish = [*_ordered_reader(summaries), f"{_JS_API}.DIRECT.GET.{summaries}.>",
               *(s.api(op) for op in _BULK_OPERATIONS), _own_inbox(inbox)]
    subscribe = [*(s.api(op) for op in sorted(INDEX_OPERATIONS)),
                 *_service(s.index_service_name), _own_inbox(inbox)]
    return Permissions(Role.INDEX, user, inbox, tuple(publish), tuple(subscribe),
                       tuple(_forging_publish(s)), tuple(_secret_subscribe(s)),
                       responses=True)


def _gateway(s: Subjects, user: str, inbox: str) -> Permissions:
    # The API keys: watched (revocations), and each key's last use written back.
    keys = f"KV_{s.keys_bucket}"
    publish = [s.api(">"), f"$SRV.PING.{s.service_name}", f"$SRV.PING.{s.index_service_name}",
               *_ordered_reader(s.events_stream), *_ordered_reader(keys),
               f"$KV.{s.keys_bucket}.>", _own_inbox(inbox)]
    return Permissions(Role.GATEWAY, user, inbox, tuple(publish), (_own_inbox(inbox),),
                       tuple(_forging_publish(s, but=[s.keys_bucket])),
                       tuple(_secret_subscribe(s)))


def _worker(s: Subjects, user: str, inbox: str, task_types: Sequence[str]) -> Permissions:
    if not task_types:
        raise ValueError("a worker serves at least one task type")
    for task_type in task_types:
        if not TASK_TYPE_RE.match(task_type):
            raise ValueError(f"invalid task type {task_type!r}")
    tasks, blobs = s.tasks_stream, f"OBJ_{s.blobs_bucket}"
    # Results on a workflow's partition, and (for tasks queued before partitions) without.
    publish = [s.result("*", "*"), f"{s.prefix}.result.*", f"{s.prefix}.dlq.*",
               _stream_info(tasks),
               _stream_info(s.dlq_stream),
               # One consumer per priority level of each task type (docs/priorities.md).
               *(subject for t in task_types for level in LEVELS
                 for subject in _pulled(tasks, s.worker_consumer(t, level), s.task(t, level))),
               # Inputs passed by reference (a large upstream output) are read here.
               *_ordered_reader(blobs), f"{_JS_API}.STREAM.MSG.GET.{blobs}",
               f"{_JS_API}.STREAM.NAMES", _own_inbox(inbox)]
    subscribe = [s.all_cancels, *(_leader_elected(tasks, s.worker_consumer(t, level))
                                  for t in task_types for level in LEVELS),
                 _own_inbox(inbox)]
    return Permissions(Role.WORKER, user, inbox, tuple(publish), tuple(subscribe),
                       tuple(_forging_publish(s)), tuple(_secret_subscribe(s)),
                       task_types=tuple(task_types))


def _submitter(s: Subjects, user: str, inbox: str) -> Permissions:
    publish = [s.submit, *(s.api(op) for op in SUBMIT_OPERATIONS), _own_inbox(inbox)]
    return Permissions(Role.SUBMITTER, user, inbox, tuple(publish), (_own_inbox(inbox),),
                       tuple(_forging_publish(s)), tuple(_secret_subscribe(s)))


def _watcher(s: Subjects, user: str, inbox: str) -> Permissions:
    publish = [*_ordered_reader(s.events_stream), *(s.api(op) for op in READ_OPERATIONS),
               _own_inbox(inbox)]
    subscribe = [s.all_events, _own_inbox(inbox)]
    return Permissions(Role.WATCHER, user, inbox, tuple(publish), tuple(subscribe),
                       (*_forging_publish(s), s.submit),
                       tuple(_secret_subscribe(s)))


def permissions_for(role: Role | str, subjects: Subjects, *, user: str | None = None,
                    task_types: Iterable[str] = (), egress: Iterable[str] = (),
                    trigger_streams: Iterable[str] = ()) -> Permissions:
    """The permissions of one user of the deployment.

    Args:
        role: What the user is.
        subjects: The deployment's names.
        user: Its name (default: the role's name); its inbox prefix is built from it.
        task_types: For a worker, the task types it serves (at least one).
        egress: For the orchestrator, the subjects its ``request`` and ``publish`` steps
            may reach (the server's and natsflow's own are refused by the steps anyway).
        trigger_streams: For the orchestrator, the JetStream streams of your own that
            triggers read (``stream:``; docs/triggers.md): their info and consumers.

    Raises:
        ValueError: an invalid user name or task type, or a worker without task types.
    """
    role = Role(role)
    name = user or role.value
    inbox = inbox_prefix(name)
    if role is Role.ORCHESTRATOR:
        return _orchestrator(subjects, name, inbox, list(egress), list(trigger_streams))
    if role is Role.INDEX:
        return _index(subjects, name, inbox)
    if role is Role.GATEWAY:
        return _gateway(subjects, name, inbox)
    if role is Role.WORKER:
        return _worker(subjects, name, inbox, list(task_types))
    if role is Role.SUBMITTER:
        return _submitter(subjects, name, inbox)
    return _watcher(subjects, name, inbox)


def nsc_command(perms: Permissions, *, account: str = "natsflow") -> str:
    """The ``nsc add user`` command giving ``perms`` to a user of an operator/account
    (JWT) setup: the same permissions as the server configuration's user."""
    args = [f"nsc add user --account {account} --name {perms.user}"]
    args += [f"--allow-pub '{s}'" for s in perms.publish]
    args += [f"--deny-pub '{s}'" for s in perms.publish_deny]
    args += [f"--allow-sub '{s}'" for s in perms.subscribe]
    args += [f"--deny-sub '{s}'" for s in perms.subscribe_deny]
    if perms.responses:
        args.append("--allow-pub-response")
    return " \\\n    ".join(args)
