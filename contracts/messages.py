"""Messages between services: the worker contract, batches and the request/reply API.

Worker contract (any language; JSON over NATS):

1. Bind to the durable pull consumer ``worker-<task type, dots as _>`` on stream
   ``<PREFIX>_TASKS`` (filter ``<prefix>.task.<task type>``), or create it if missing.
2. Each message is a :class:`TaskMessage`. Run it. While it runs, send an in-progress
   ack (``+WPI``) at least every ``heartbeat_interval`` seconds; if ``heartbeat_timeout``
   is set, also publish a :class:`TaskProgress` with ``progress: null`` to ``reply_to``
   when it starts and at least every ``heartbeat_timeout / 3`` seconds.
3. Publish a :class:`TaskResult` (``succeeded`` or ``failed``) to ``reply_to`` with
   JetStream (wait for the publish ack), header ``Nats-Msg-Id: <idempotency_key>:result``;
   then ack the task message. Optional ``progress`` results may be sent meanwhile.
   Every result and progress report carries the task's ``workflow_id``, ``step_id``,
   ``attempt`` and ``token`` as they came: a report whose token is not the attempt's
   is refused (dead-lettered as ``forged-result``).
4. A :class:`CancelNotice` on ``<prefix>.cancel.<workflow_id>`` asks to abandon a running
   attempt; report it as failed with code ``cancelled`` (or just stop).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ErrorInfo, ValidationFailed
from .models import (
    MAX_CONFIG_BYTES,
    WorkflowConfig,
    WorkflowState,
    WorkflowStatus,
    WorkflowSummary,
)
from .namespaces import DEFAULT_NAMESPACE, Namespace, Scope, is_default
from .priorities import Priority

__all__ = [
    "BatchConfig",
    "BatchMember",
    "BatchReply",
    "BatchState",
    "BatchStatus",
    "CancelNotice",
    "CreateBatchRequest",
    "CreateWorkflowRequest",
    "DeadLetter",
    "IdRequest",
    "BATCH_TERMINAL",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_SIZE",
    "MAX_REQUEST_BYTES",
    "TaskFailed",
    "TaskMessage",
    "TaskProgress",
    "TaskResult",
    "TaskSucceeded",
    "BulkRequest",
    "BulkResult",
    "ListWorkflowsRequest",
    "RerunRequest",
    "WorkflowList",
    "RetryRequest",
    "SignalRequest",
    "WorkflowReply",
    "WorkflowTemplate",
]

MAX_BATCH_SIZE = 10_000
#: Largest accepted BatchConfig, as JSON (a template plus up to MAX_BATCH_SIZE inputs).
MAX_BATCH_BYTES = 4 * 1024 * 1024
#: Largest request of the API other than a batch, as JSON: a config (MAX_CONFIG_BYTES)
#: and room for the fields around it.
MAX_REQUEST_BYTES = MAX_CONFIG_BYTES + 1024
_BatchId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_]+$")]


class TaskMessage(BaseModel):
    """One attempt of one step, as a worker receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    step_id: str
    attempt: int = Field(ge=1)
    task: str = Field(description="The task type.")
    input: dict[str, Any]
    idempotency_key: str = Field(description="`<workflow_id>:<step_id>:<attempt>`, the same "
                                 "on every redelivery of this attempt.")
    reply_to: str = Field(description="Subject to publish the TaskResult to (JetStream).")
    deadline: datetime | None = Field(default=None, description="When this attempt times out.")
    heartbeat_interval: float = Field(description="Send an in-progress ack at least this "
                                      "often (seconds).")
    heartbeat_timeout: float | None = Field(
        default=None, description="If set, report progress (a `progress` result, `progress` "
        "may be null) at least this often (seconds), or the attempt is presumed dead.")
    start_by: datetime | None = Field(
        default=None, description="The step's `schedule_to_start` deadline: a worker that "
        "takes the attempt later drops it unrun (the orchestrator has failed it by then).")
    report_start_at: datetime | None = Field(
        default=None, description="From this time on, tell `reply_to` that the attempt "
        "runs (a `progress` result with `progress: null`): at once if it starts later, "
        "else at this time if it is still running. The orchestrator tells a queued "
        "attempt from a running one by it.")
    token: str | None = Field(
        default=None, max_length=64, repr=False,
        description="The attempt's result token: echo it in every result and progress "
        "report of this attempt. Unguessable, known only to the orchestrator and to "
        "whoever received this task; a report without it is refused.")


class _ResultBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    step_id: str
    attempt: int = Field(ge=1)
    started_at: datetime | None = Field(default=None, description="When the worker began.")
    token: str | None = Field(default=None, max_length=64, repr=False,
                              description="The `token` of the task message answered.")


class TaskSucceeded(_ResultBase):
    """The attempt succeeded; ``output`` becomes the step's output."""

    kind: Literal["succeeded"] = "succeeded"
    output: Any = None


class TaskFailed(_ResultBase):
    """The attempt failed; retried unless ``error.retryable`` is false or attempts ran out."""

    kind: Literal["failed"] = "failed"
    error: ErrorInfo


class TaskProgress(_ResultBase):
    """Optional progress of a running attempt (shown on the step, emitted as an event)."""

    kind: Literal["progress"] = "progress"
    progress: Any = None


TaskResult = Annotated[TaskSucceeded | TaskFailed | TaskProgress, Field(discriminator="kind")]


class CancelNotice(BaseModel):
    """Asks the worker running this attempt to stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    step_id: str
    attempt: int


class DeadLetter(BaseModel):
    """A message natsflow could not use, kept with the reason.

    Built by :func:`contracts.dead_letters.dead_letter` only, which keeps it within the
    server's ``max_payload``: ``data`` is cut short (``truncated``) when the whole
    letter would not fit; ``size`` and ``sha256`` always describe the original payload.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: ErrorInfo
    subject: str
    stream_seq: int | None = None
    deliveries: int | None = None
    data: str = Field(description="The original payload (UTF-8, invalid bytes replaced); "
                      "only its beginning if `truncated`.")
    truncated: bool = Field(default=False, description="`data` is the beginning of the "
                            "payload only: the whole of it would not fit in a message.")
    size: int | None = Field(default=None, ge=0,
                             description="Bytes of the original payload.")
    sha256: str | None = Field(default=None, description="SHA-256 of the original payload, "
                               "hex.")
    time: datetime


# -- batches -------------------------------------------------------------------------


class WorkflowTemplate(BaseModel):
    """A WorkflowConfig without id and input: what every member of a batch runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    steps: list[dict[str, Any]]
    labels: dict[str, str] = Field(default_factory=dict)
    output: Any = None
    priority: Priority | None = Field(default=None, exclude_if=lambda v: v is None,
                                      description="Every member's priority, 1 to 5.")

    def config_for(self, *, workflow_id: str, input: dict[str, Any], batch_id: str,
                   namespace: str = DEFAULT_NAMESPACE) -> WorkflowConfig:
        """The config of one member workflow (in the batch's ``namespace``)."""
        return WorkflowConfig.model_validate({
            "name": self.name, "id": workflow_id, "namespace": namespace, "input": input,
            "steps": self.steps, "labels": {**self.labels, "batch": batch_id},
            "output": self.output,
            **({} if self.priority is None else {"priority": self.priority}),
        })


class BatchConfig(BaseModel):
    """One workflow template run once per input, at most ``max_concurrency`` at a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: _BatchId | None = None
    # Left out of the JSON when default, as a workflow's (fingerprints stay the same).
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default,
                                 description="The namespace of the batch and its members.")
    workflow: WorkflowTemplate
    inputs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_SIZE)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)


class CreateBatchRequest(BatchConfig):
    """Body of ``<prefix>.api.batch.create``: a BatchConfig, and the caller's scope."""

    namespaces: Scope = None

    def batch_config(self) -> BatchConfig:
        """The config without the scope (its fields are checked already)."""
        return BatchConfig.model_construct(
            **{name: getattr(self, name) for name in BatchConfig.model_fields})


class BatchState(StrEnum):
    """Lifecycle of a batch."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


BATCH_TERMINAL = frozenset({BatchState.COMPLETED, BatchState.FAILED, BatchState.STOPPED})


class BatchMember(BaseModel):
    """One member workflow of a batch. ``state`` is ``pending`` until it is started."""

    model_config = ConfigDict(extra="forbid")

    index: int
    workflow_id: str
    state: str = "pending"


class BatchStatus(BaseModel):
    """What GET /batches/{id} returns."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    state: BatchState
    max_concurrency: int | None = None
    counts: dict[str, int] = Field(description="Members per state (pending, running, ...).")
    members: list[BatchMember]
    created_at: datetime
    finished_at: datetime | None = None


# -- request/reply API ---------------------------------------------------------------


class CreateWorkflowRequest(BaseModel):
    """Body of ``<prefix>.api.workflow.create``: a whole ``config``, or a stored
    ``definition`` (latest, or ``version``) with its ``input``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: WorkflowConfig | None = None
    definition: str | None = Field(default=None, min_length=1, max_length=100,
                                   pattern=r"^[A-Za-z0-9_-]+$")
    version: int | None = Field(default=None, ge=1)
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=128,
                           pattern=r"^[A-Za-z0-9_-]+$")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    start: bool = True
    namespace: Namespace | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="With `definition`: the namespace it is looked up in and the workflow "
        "runs in (default: `default`). With `config`, it goes inside the config.")
    priority: Priority | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="With `definition`: 1 to 5, instead of the definition's own priority.")
    idempotency_key: str | None = Field(default=None, max_length=256)
    namespaces: Scope = None

    @model_validator(mode="after")
    def _one_source(self) -> CreateWorkflowRequest:
        if (self.config is None) == (self.definition is None):
            raise ValidationFailed("give exactly one of `config` and `definition`",
                                   field="definition" if self.config else "config")
        if self.config is not None and (self.input or self.labels or self.id
                                        or self.version or not self.start
                                        or self.namespace is not None
                                        or self.priority is not None):
            raise ValidationFailed("`input`, `labels`, `id`, `version`, `start`, "
                                   "`namespace` and `priority` go inside `config` here",
                                   field="config")
        return self

    @property
    def target_namespace(self) -> str:
        """The namespace the workflow is to be created in."""
        if self.config is not None:
            return self.config.namespace
        return self.namespace or DEFAULT_NAMESPACE


class IdRequest(BaseModel):
    """Body of the get/start/stop endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    namespaces: Scope = None


class ListWorkflowsRequest(BaseModel):
    """``workflow.list``: filters (all optional, combined with AND), newest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: list[WorkflowState] = Field(default_factory=list, description="Any of these.")
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="All of these.")
    batch_id: str | None = None
    namespace: str | None = Field(default=None, exclude_if=lambda v: v is None,
                                  description="Only this namespace's.")
    created_after: datetime | None = None
    created_before: datetime | None = None
    cursor: str | None = Field(default=None, description="`next_cursor` of the last page.")
    limit: int = Field(default=50, ge=1, le=500)
    namespaces: Scope = None


class WorkflowList(BaseModel):
    """A page of the workflow list."""

    model_config = ConfigDict(extra="forbid")

    items: list[WorkflowSummary]
    next_cursor: str | None = Field(default=None, description="Pass it back for the "
                                    "next page; absent on the last page.")


class BulkRequest(BaseModel):
    """``workflow.bulk``: apply one operation to every workflow a filter selects.

    A filter that selects nothing in particular is refused unless ``all`` says that
    every workflow is meant: a body lost on the way must not mean "everything".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    operation: Literal["stop", "pause", "resume", "retry"]
    filter: ListWorkflowsRequest = Field(default_factory=ListWorkflowsRequest,
                                         description="Which workflows (cursor and limit "
                                         "are ignored: every match is taken).")
    all: bool = Field(default=False, description="Every workflow, with no filter: "
                      "required when `filter` selects on nothing, refused with one.")
    dry_run: bool = Field(default=False, description="Only report what would be touched.")
    max_workflows: int = Field(default=10_000, ge=1, le=100_000,
                               description="Refuse to touch more than this many.")
    namespaces: Scope = None

    @model_validator(mode="after")
    def _all_is_explicit(self) -> BulkRequest:
        # A scope is who asks, not what is asked for: "all" is still every workflow
        # (that the caller may touch).
        selects = self.filter.model_dump(exclude_defaults=True,
                                         exclude={"cursor", "limit", "namespaces"})
        if not selects and not self.all:
            raise ValidationFailed(
                'the filter selects every workflow: give a filter, or "all": true to '
                f"{self.operation} every workflow", field="all")
        if selects and self.all:
            raise ValidationFailed(f'"all": true with a filter ({", ".join(selects)}): '
                                   "give one or the other", field="all")
        return self


class BulkResult(BaseModel):
    """What a bulk operation touched (or, in a dry run, would touch)."""

    model_config = ConfigDict(extra="forbid")

    operation: str
    dry_run: bool
    matched: int
    ids: list[str] = Field(description="The matched ids (the first 1,000).")
    done: int = Field(default=0, description="Operations accepted.")
    refused: dict[str, str] = Field(default_factory=dict,
                                    description="Id -> error code, for those refused.")


class RetryRequest(BaseModel):
    """``workflow.retry``: run a failed or stopped workflow again from its unfinished steps,
    keeping the outputs of the steps that succeeded; ``inputs`` replace the input of
    retried steps (by step id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    namespaces: Scope = None


class RerunRequest(BaseModel):
    """``workflow.rerun``: a new workflow from the same config, with the same input (or
    ``input``), in the same namespace. With ``from_step``, only that step and the steps
    after it run again; the others that had succeeded take their earlier outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] | None = None
    from_step: str | None = Field(default=None, max_length=128)
    new_id: str | None = Field(default=None, min_length=1, max_length=128,
                               pattern=r"^[A-Za-z0-9_-]+$")
    namespaces: Scope = None


class SignalRequest(BaseModel):
    """``workflow.signal``: deliver the signal ``name`` (with ``payload``) to a workflow.

    A wait step waiting for that name takes it at once; otherwise it is kept until one
    starts (at most 100 per workflow).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    payload: Any = None
    namespaces: Scope = None


class WorkflowReply(BaseModel):
    """Reply of the workflow endpoints.

    ``created`` is true when this request created the workflow, false when it already
    existed (an idempotent resubmit). ``status`` is None only when the orchestrator
    accepted the command but did not finish it in time (it will).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    created: bool = False
    status: WorkflowStatus | None = None


class BatchReply(BaseModel):
    """Reply of the batch endpoints."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created: bool = False
    status: BatchStatus | None = None
