"""What every family of models shares: the context keys, the size limits, the id and
duration types, and leaving secrets out of what is shown."""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import (
    Field,
    SerializationInfo,
)

from contracts.subjects import TASK_TYPE_RE, TOKEN_RE

#: Validation-context key: set (to True) only when reading data natsflow stored itself.
TRUSTED: Final = "natsflow-trusted"
#: Validation-context key: the config is a definition or template, its input comes later.
TEMPLATE: Final = "natsflow-template"
#: Serialization-context key: the JSON goes to a client; secrets are left out of it.
SHOWN: Final = "natsflow-shown"

#: Largest accepted WorkflowConfig, as JSON.
MAX_CONFIG_BYTES: Final = 256 * 1024
#: Most steps in one workflow.
MAX_STEPS: Final = 200
#: Largest output one step may return, as JSON; larger fails the step (output-too-large).
MAX_STEP_OUTPUT_BYTES: Final = 128 * 1024
#: Budget for all step outputs of one workflow together (its state lives in one KV value).
MAX_OUTPUTS_BYTES: Final = 512 * 1024
#: Most webhooks one workflow may name.
MAX_WEBHOOKS: Final = 5
#: Longest webhook URL.
MAX_WEBHOOK_URL: Final = 2048


def without_secrets(data: Any, info: SerializationInfo) -> Any:
    """``data`` (a model's serialized dict) without its ``secret`` when it is shown."""
    if isinstance(data, dict) and isinstance(info.context, dict) and info.context.get(SHOWN):
        data.pop("secret", None)
    return data

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=TOKEN_RE.pattern)]
TaskType = Annotated[str, Field(min_length=1, max_length=128, pattern=TASK_TYPE_RE.pattern)]
Seconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]
#: A worker kind's ``schedule_to_start`` (Temporal's name).
ScheduleToStart = Annotated[Seconds | None, Field(
    description="Seconds an attempt may wait for a worker to start it; then it fails "
    "with `schedule-to-start-timeout` (retryable, per `retry`).")]
