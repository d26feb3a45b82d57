"""Workflow definitions, statuses and status events: the models of the wire and the store.

One module per family, all re-exported here (import from ``contracts.models``):

- ``_common``: context keys (``TRUSTED``, ``TEMPLATE``, ``SHOWN``), size limits, id types;
- ``_steps``: the step configs, one per kind, and their ``StepConfig`` union;
- ``_workflow``: ``WorkflowConfig`` and the checks of its step graph;
- ``_status``: lifecycle states, ``WorkflowStatus`` and ``WorkflowSummary``;
- ``_events``: ``EventType`` and ``Event``.
"""

from __future__ import annotations

from contracts.models._common import (
    MAX_CONFIG_BYTES,
    MAX_OUTPUTS_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    MAX_STEPS,
    MAX_WEBHOOKS,
    SHOWN,
    TEMPLATE,
    TRUSTED,
    without_secrets,
)
from contracts.models._events import (
    EVENT_TERMINAL,
    Event,
    EventType,
)
from contracts.models._status import (
    STEP_ACTIVE,
    STEP_IN_FLIGHT,
    STEP_TERMINAL,
    WORKFLOW_ACTIVE,
    WORKFLOW_TERMINAL,
    MapProgress,
    PendingSignal,
    StepState,
    StepStatus,
    WorkerWaitReason,
    WorkflowState,
    WorkflowStatus,
    WorkflowSummary,
)
from contracts.models._steps import (
    BUILTIN_TASK,
    EXPRESSION_VARIABLES,
    ITEM_VARIABLES,
    MAX_MAP_ITEMS,
    WORKER_KINDS,
    HttpStep,
    MapStep,
    PublishStep,
    RequestStep,
    RetryPolicy,
    SleepStep,
    StepConfig,
    StepKind,
    SwitchStep,
    TaskStep,
    TransformStep,
    WaitStep,
    WorkflowStep,
)
from contracts.models._workflow import (
    ParentRef,
    Webhook,
    WorkflowConfig,
    ancestors_of,
    check_graph,
)

__all__ = [
    "EVENT_TERMINAL",
    "MAX_CONFIG_BYTES",
    "MAX_OUTPUTS_BYTES",
    "MAX_STEPS",
    "MAX_STEP_OUTPUT_BYTES",
    "MAX_WEBHOOKS",
    "Event",
    "EventType",
    "RetryPolicy",
    "StepConfig",
    "TRUSTED",
    "TEMPLATE",
    "SHOWN",
    "StepState",
    "STEP_IN_FLIGHT",
    "STEP_ACTIVE",
    "ITEM_VARIABLES",
    "MAX_MAP_ITEMS",
    "MapStep",
    "MapProgress",
    "BUILTIN_TASK",
    "WORKER_KINDS",
    "StepKind",
    "TaskStep",
    "RequestStep",
    "HttpStep",
    "PublishStep",
    "SleepStep",
    "WaitStep",
    "TransformStep",
    "SwitchStep",
    "WorkflowStep",
    "ParentRef",
    "PendingSignal",
    "EXPRESSION_VARIABLES",
    "STEP_TERMINAL",
    "StepStatus",
    "Webhook",
    "WorkflowConfig",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowSummary",
    "WORKFLOW_ACTIVE",
    "WORKFLOW_TERMINAL",
    "WorkerWaitReason",
    "ancestors_of",
    "check_graph",
    "without_secrets",
]
