"""What the engine reads and writes: stored records, inputs, effects and decisions.

These are the orchestrator's own models (the wire contracts live in ``contracts``).
A record is the whole state of one workflow (or batch) as kept in its KV bucket,
including the *outbox*: the effects of its last transition, kept until published so a
crash between the write and the publish loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from contracts.errors import ErrorInfo, RecordUnreadable
from contracts.messages import (
    BatchConfig,
    BatchStatus,
    CancelNotice,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskSucceeded,
)
from contracts.models import (
    TRUSTED,
    Event,
    ParentRef,
    WorkflowConfig,
    WorkflowStatus,
    WorkflowSummary,
)
from contracts.namespaces import DEFAULT_NAMESPACE, Scope
from contracts.webhooks import WebhookDelivery
from transport.tracing import TraceContext

from .permits import LimitEffect, PermitInput
from .workers import ConsumerView

__all__ = [
    "BatchCommand",
    "BatchDecision",
    "BatchInput",
    "BatchRecord",
    "CancelEffect",
    "CreateBatch",
    "CreateWorkflow",
    "Decided",
    "Decisions",
    "Effect",
    "EventEffect",
    "JoinMapEffect",
    "MapJoined",
    "MemberFinished",
    "PauseWorkflow",
    "ResumeWorkflow",
    "RetryWorkflow",
    "PutOutputEffect",
    "NotifyParentEffect",
    "SignalWorkflow",
    "StartChildEffect",
    "NotifyBatchEffect",
    "Reply",
    "decide_each",
    "read_record",
    "ResultInput",
    "StartWorkflow",
    "StopBatch",
    "StopWorkflow",
    "SummaryEffect",
    "TaskEffect",
    "TimerEffect",
    "TimerFired",
    "WebhookEffect",
    "WorkflowCommand",
    "WorkflowCommandEffect",
    "WorkflowDecision",
    "WorkflowInput",
    "WorkflowRecord",
]

_Frozen = ConfigDict(extra="forbid", frozen=True)


# -- inputs of the workflow engine ------------------------------------------------


class CreateWorkflow(BaseModel):
    """Create a workflow (and start it unless ``config.start`` is false)."""

    model_config = _Frozen
    kind: Literal["create"] = "create"
    config: WorkflowConfig
    fingerprint: str
    batch_id: str | None = None
    reuse: dict[str, Any] = Field(default_factory=dict,
                                  description="Rerun: step id -> output taken as is.")
    rerun_of: str | None = None
    trace: TraceContext | None = Field(
        default=None, description="The creator's trace context; kept with the workflow.")


class StartWorkflow(BaseModel):
    """Start a created workflow."""

    model_config = _Frozen
    kind: Literal["start"] = "start"
    namespaces: Scope = None


class StopWorkflow(BaseModel):
    """Stop a workflow."""

    model_config = _Frozen
    kind: Literal["stop"] = "stop"
    reason: str | None = None
    namespaces: Scope = None


class PauseWorkflow(BaseModel):
    """Dispatch nothing new and hold timers until resumed."""

    model_config = _Frozen
    kind: Literal["pause"] = "pause"
    namespaces: Scope = None


class ResumeWorkflow(BaseModel):
    """Carry on after a pause (timers that came due fire now)."""

    model_config = _Frozen
    kind: Literal["resume"] = "resume"
    namespaces: Scope = None


class RetryWorkflow(BaseModel):
    """Run a failed or stopped workflow again from its unfinished steps."""

    model_config = _Frozen
    kind: Literal["retry"] = "retry"
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Step id -> input to use instead of its own.")
    namespaces: Scope = None


class SignalWorkflow(BaseModel):
    """Deliver a named signal (a wait step takes it, or it is kept until one does)."""

    model_config = _Frozen
    kind: Literal["signal"] = "signal"
    name: str
    payload: Any = None
    namespaces: Scope = None


class MapJoined(BaseModel):
    """A map step's item outputs were collected (by the shell) into its output."""

    model_config = _Frozen
    kind: Literal["map-joined"] = "map-joined"
    step_id: str
    attempt: int
    output: Any = Field(default=None,
                        description="The list of outputs, or a blob reference if large.")
    size: int = Field(default=0, description="Bytes of the list as JSON.")
    error: ErrorInfo | None = Field(default=None, description="Why they could not be kept.")


#: Commands sent on ``<prefix>.cmd.wf.<id>``.
WorkflowCommand = Annotated[CreateWorkflow | StartWorkflow | StopWorkflow | SignalWorkflow
                            | MapJoined | PauseWorkflow | ResumeWorkflow | RetryWorkflow
                            | PermitInput,
                            Field(discriminator="kind")]


class ResultInput(BaseModel):
    """A worker's report about one attempt."""

    model_config = _Frozen
    kind: Literal["result"] = "result"
    result: Annotated[TaskSucceeded | TaskFailed | TaskProgress, Field(discriminator="kind")]
    size: int = Field(default=0, description="Bytes of the message, to police output size.")


TimerPurpose = Literal["retry", "timeout", "total-timeout", "heartbeat", "sleep",
                       "workflow-timeout", "stop-grace", "schedule-to-start", "worker-grace",
                       "rate-limit"]


class TimerFired(BaseModel):
    """A durable timer came due (also the payload of a timer message)."""

    model_config = _Frozen
    kind: Literal["timer"] = "timer"
    workflow_id: str
    step_id: str | None = None
    attempt: int = 0
    purpose: TimerPurpose
    due: datetime
    consumers: list[ConsumerView] | None = Field(
        default=None, description="The tasks stream's consumers as a worker-grace timer came "
        "due, put in by the shell (None: not looked at; the engine says unknown).")


WorkflowInput = Annotated[
    CreateWorkflow | StartWorkflow | StopWorkflow | SignalWorkflow | MapJoined | ResultInput
    | TimerFired | PauseWorkflow | ResumeWorkflow | RetryWorkflow | PermitInput,
    Field(discriminator="kind"),
]


# -- effects (the outbox) ---------------------------------------------------------


class EventEffect(BaseModel):
    """Publish a status event."""

    model_config = _Frozen
    kind: Literal["event"] = "event"
    event: Event


class WebhookEffect(BaseModel):
    """Queue one event for one of the workflow's webhooks."""

    model_config = _Frozen
    kind: Literal["webhook"] = "webhook"
    delivery: WebhookDelivery


class TaskEffect(BaseModel):
    """Dispatch one attempt of a step to its work queue."""

    model_config = _Frozen
    kind: Literal["task"] = "task"
    task: TaskMessage
    # The workflow's, which picks the subject; left out when unset (records from before).
    priority: int | None = Field(default=None, exclude_if=lambda v: v is None)


class TimerEffect(BaseModel):
    """Arm a durable timer."""

    model_config = _Frozen
    kind: Literal["timer"] = "timer"
    timer: TimerFired


class CancelEffect(BaseModel):
    """Tell the worker running an attempt to stop (best effort, core NATS)."""

    model_config = _Frozen
    kind: Literal["cancel"] = "cancel"
    notice: CancelNotice


class NotifyBatchEffect(BaseModel):
    """Tell a batch that one of its members finished."""

    model_config = _Frozen
    kind: Literal["notify-batch"] = "notify-batch"
    batch_id: str
    workflow_id: str
    state: str


class WorkflowCommandEffect(BaseModel):
    """Send a command to a workflow (a batch starting or stopping its members)."""

    model_config = _Frozen
    kind: Literal["workflow-command"] = "workflow-command"
    workflow_id: str
    command: WorkflowCommand


class StartChildEffect(BaseModel):
    """Create a child workflow from a stored definition (the shell resolves it)."""

    model_config = _Frozen
    kind: Literal["start-child"] = "start-child"
    child_id: str
    definition: str
    version: int | None = None
    input: dict[str, Any]
    parent: ParentRef
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="The parent's: where "
                           "the definition is looked up and the child runs.")
    priority: int | None = Field(default=None, exclude_if=lambda v: v is None,
                                 description="The parent's, if it has one: the child's then.")


class NotifyParentEffect(BaseModel):
    """Report a child's end to its parent's step, as a worker would (on its result subject)."""

    model_config = _Frozen
    kind: Literal["notify-parent"] = "notify-parent"
    result: Annotated[TaskSucceeded | TaskFailed, Field(discriminator="kind")]


class SummaryEffect(BaseModel):
    """Store the workflow's list line (its state changed), for the list index."""

    model_config = _Frozen
    kind: Literal["summary"] = "summary"
    summary: WorkflowSummary
    seq: int = Field(description="`last_seq` when it was taken (for the message id).")


class PutOutputEffect(BaseModel):
    """Store one map item's output apart from the record (outputs bucket, by key)."""

    model_config = _Frozen
    kind: Literal["put-output"] = "put-output"
    key: str
    output: Any = None
    # The output's compact JSON when its maker had it already (never stored itself).
    _json: bytes | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, key: str, output: Any, output_json: bytes) -> PutOutputEffect:
        """The effect, with the output's compact JSON its maker made already."""
        effect = cls(key=key, output=output)
        effect._json = output_json
        return effect

    def output_json(self) -> bytes:
        """The output as the outputs bucket stores it: compact JSON."""
        if self._json is None:
            self._json = json.dumps(self.output, separators=(",", ":")).encode()
        return self._json

    def __eq__(self, other: object) -> bool:
        # Equal effects have equal fields; whether their JSON was kept is not state.
        if not isinstance(other, PutOutputEffect):
            return NotImplemented
        return self.key == other.key and self.output == other.output

    __hash__ = None  # type: ignore[assignment]  # its output may be a dict


class JoinMapEffect(BaseModel):
    """Collect a map step's item outputs, in order, and send them back as MapJoined."""

    model_config = _Frozen
    kind: Literal["join-map"] = "join-map"
    workflow_id: str
    step_id: str
    attempt: int
    total: int


Effect = Annotated[
    EventEffect | TaskEffect | TimerEffect | CancelEffect | NotifyBatchEffect
    | WorkflowCommandEffect | StartChildEffect | NotifyParentEffect | PutOutputEffect
    | JoinMapEffect | SummaryEffect | WebhookEffect | LimitEffect,
    Field(discriminator="kind"),
]


# -- records --------------------------------------------------------------------


def _outbox_entry(effect: Any, bodies: Mapping[int, bytes]) -> bytes:
    body = bodies.get(id(effect))
    if body is not None:
        if isinstance(effect, EventEffect):
            return b'{"kind":"event","event":' + body + b"}"
        if isinstance(effect, TaskEffect):
            return b'{"kind":"task","task":' + body + b"}"
        if isinstance(effect, PutOutputEffect):
            return (b'{"kind":"put-output","key":' + json.dumps(effect.key).encode()
                    + b',"output":' + body + b"}")
    return effect.model_dump_json(exclude_none=True).encode()  # type: ignore[no-any-return]


#: What a record's ``outbox_inputs`` is (see ``Processor`` in :mod:`.runtime`).
OUTBOX_INPUTS_DOC = (
    "INBOX stream sequences of the inputs whose transitions made the outbox (carried "
    "parts included): an input is acked only once its outbox is stored, so when none of "
    "them is left in the work queue the outbox was published. None: not known (an older "
    "record, or an input without a sequence): the outbox is republished.")


class _Stored(BaseModel):
    """A record's stored form: JSON, nulls left out (``None`` inside data is kept).

    A record's config never changes and the engine passes the same config object from
    one record to the next, so its JSON (often most of the record) is made once and
    carried along rather than made again on every write.
    """

    config: Any
    # (the config it was made from, its JSON); never stored itself
    _config_json: tuple[Any, bytes] | None = PrivateAttr(default=None)

    def stored_form(self, previous: _Stored | None = None,
                    bodies: Mapping[int, bytes] | None = None) -> bytes:
        """The bytes to store; the config's JSON is taken from ``previous`` when it has
        the same config object.

        ``bodies`` holds message bodies already made for events and tasks of the outbox
        (keyed by the effect's ``id``): their entries are built around those bytes
        rather than dumped a second time (nulls and all, which parse back the same).
        """
        config = self.config
        memo = self._config_json
        if (memo is None or memo[0] is not config) and previous is not None:
            memo = previous._config_json
        if memo is None or memo[0] is not config:
            memo = (config, config.model_dump_json(exclude_none=True).encode())
        self._config_json = memo
        if not bodies:
            rest = self.model_dump_json(exclude={"config"}, exclude_none=True).encode()
            return b'{"config":' + memo[1] + b"," + rest[1:]
        rest = self.model_dump_json(exclude={"config", "outbox"}, exclude_none=True).encode()
        outbox = b",".join([_outbox_entry(e, bodies) for e in self.outbox])  # type: ignore[attr-defined]
        return b'{"config":' + memo[1] + b',"outbox":[' + outbox + b"]," + rest[1:]

    def __eq__(self, other: object) -> bool:
        # Equal records have equal fields; whether a JSON memo was made is not state.
        if not isinstance(other, _Stored):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like any unfrozen model


S = TypeVar("S", bound="_Stored")
R_co = TypeVar("R_co", covariant=True)


def read_record(model: type[S], raw: bytes, *, key: str) -> S:
    """A record read back from its bucket.

    Raises:
        RecordUnreadable: the entry is not a record natsflow wrote (someone else
            overwrote it): said as such, never as the reader's own mistake.
    """
    try:
        return model.model_validate_json(raw, context={TRUSTED: True})
    except ValidationError as exc:
        what = "batch" if model.__name__.startswith("Batch") else "workflow"
        raise RecordUnreadable(
            f"the stored record of {what} {key!r} cannot be read: it is not one natsflow "
            f"wrote (its KV entry was overwritten; see docs/security.md): "
            f"{exc.error_count()} errors, first at "
            f"{'.'.join(str(p) for p in exc.errors()[0]['loc']) or 'the top'}",
            details={"id": key}) from None


class WorkflowRecord(_Stored):
    """Everything stored about one workflow."""

    model_config = ConfigDict(extra="forbid")

    config: WorkflowConfig
    fingerprint: str
    status: WorkflowStatus
    outputs_bytes: int = 0
    outbox: list[Effect] = Field(default_factory=list)
    outbox_at: datetime | None = None
    outbox_inputs: list[int] | None = Field(default=None, description=OUTBOX_INPUTS_DOC)
    trace: TraceContext | None = Field(
        default=None, description="W3C trace context its task messages carry.")


class Reply(BaseModel):
    """What the requester of a command is told: a result or an error."""

    model_config = _Frozen

    created: bool = False
    error: ErrorInfo | None = None
    #: The input came ahead of the record it belongs to (a result of a task sent while
    #: its dispatch was being saved, see ``Processor``): hand it back for later.
    early: bool = False
    #: The input does not count and never will (a report without its attempt's token):
    #: dead-letter it with this reason.
    refused: ErrorInfo | None = None


@dataclass(slots=True)
class WorkflowDecision:
    """The engine's answer to one input (a plain value: never stored nor sent).

    ``record`` is None when nothing changed (nothing to write, nothing to publish).
    """

    record: WorkflowRecord | None
    effects: list[Effect] = field(default_factory=list)
    reply: Reply = field(default_factory=Reply)


# -- batches --------------------------------------------------------------------


class CreateBatch(BaseModel):
    """Create and start a batch."""

    model_config = _Frozen
    kind: Literal["create"] = "create"
    config: BatchConfig
    fingerprint: str


class StopBatch(BaseModel):
    """Stop a batch."""

    model_config = _Frozen
    kind: Literal["stop"] = "stop"
    namespaces: Scope = None


class MemberFinished(BaseModel):
    """A member workflow reached a terminal state."""

    model_config = _Frozen
    kind: Literal["member-finished"] = "member-finished"
    workflow_id: str
    state: str


BatchInput = Annotated[CreateBatch | StopBatch | MemberFinished, Field(discriminator="kind")]
BatchCommand = BatchInput


class BatchRecord(_Stored):
    """Everything stored about one batch."""

    model_config = ConfigDict(extra="forbid")

    config: BatchConfig
    fingerprint: str
    status: BatchStatus
    outbox: list[Effect] = Field(default_factory=list)
    outbox_at: datetime | None = None
    outbox_inputs: list[int] | None = Field(default=None, description=OUTBOX_INPUTS_DOC)


@dataclass(slots=True)
class BatchDecision:
    """The batch engine's answer to one input."""

    record: BatchRecord | None
    effects: list[Effect] = field(default_factory=list)
    reply: Reply = field(default_factory=Reply)





#: A record kind, and an input kind, of :func:`decide_each`.
R = TypeVar("R", "WorkflowRecord", "BatchRecord")
In = TypeVar("In")


class Decided(Protocol[R_co]):
    """One input's decision (:class:`WorkflowDecision`, :class:`BatchDecision`)."""

    @property
    def record(self) -> R_co | None: ...
    @property
    def effects(self) -> list[Effect]: ...
    @property
    def reply(self) -> Reply: ...


@dataclass(slots=True)
class Decisions(Generic[R]):
    """The engine's answer to a group of inputs to one record, applied in order.

    ``record`` is the record after all of them: the very one given when nothing
    changed (None only if there was none and nothing created it); ``effects`` are the
    decisions' effects in order, ``replies`` one per input.
    """

    record: R | None
    effects: list[Effect]
    replies: list[Reply]


def decide_each(decide_one: Callable[[R | None, In], Decided[R]], record: R | None,
                inputs: Sequence[In]) -> Decisions[R]:
    """Decide each input on the record the one before it left."""
    current = record
    effects: list[Effect] = []
    replies: list[Reply] = []
    for inp in inputs:
        decision = decide_one(current, inp)
        if decision.record is not None:
            current = decision.record
            effects.extend(decision.effects)
        replies.append(decision.reply)
    return Decisions(current, effects, replies)
