"""Built-in step types: any NATS service or HTTP endpoint as a workflow step, no user code.

The engine dispatches these steps as ordinary :class:`~contracts.messages.TaskMessage`
values on the work queue of reserved task types, so retries, timeouts, redelivery and
cancellation work exactly as for user workers; the orchestrator process serves them.
Each model below is exactly the rendered task ``input`` of its task type.

Task types under :data:`RESERVED_TASK_PREFIX` belong to natsflow: user workers may not
serve them.

Header values and HTTP query parameters are text; a number or boolean that a template
gives them (``"${input.page}"``) is converted as a template writes it into text (compact
JSON: ``2``, ``1.5``, ``true``), since that loses nothing. Anything else stays an error.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

__all__ = [
    "BUILTIN_TASKS",
    "HTTP_TASK",
    "PUBLISH_TASK",
    "REQUEST_TASK",
    "RESERVED_TASK_PREFIX",
    "HttpInput",
    "as_text",
    "PublishInput",
    "RequestInput",
    "is_reserved_task",
]

#: Task types starting with this belong to natsflow's built-in steps.
RESERVED_TASK_PREFIX: Final = "natsflow."
#: A NATS request/reply call; the reply is the step's output.
REQUEST_TASK: Final = "natsflow.request"
#: An HTTP call; the response body is the step's output.
HTTP_TASK: Final = "natsflow.http"
#: A NATS publish (core, or JetStream awaiting the ack).
PUBLISH_TASK: Final = "natsflow.publish"
BUILTIN_TASKS: Final[frozenset[str]] = frozenset({REQUEST_TASK, HTTP_TASK, PUBLISH_TASK})

# Literal subject tokens: no whitespace, no empty token, no wildcard.
_SUBJECT_RE: Final = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
# The flag is inline: pydantic's pattern takes the text, not Python's flags.
_HTTP_URL_RE: Final = re.compile(r"(?i)^https?://[^\s/?#]+[^\s]*$")


def is_reserved_task(task_type: str) -> bool:
    """True for task types only natsflow itself may serve (``natsflow.*``)."""
    return task_type.startswith(RESERVED_TASK_PREFIX)


def as_text(value: Any) -> Any:
    """A number or boolean as the text a template would write it as; anything else as is.

    Lossless both ways: ``2`` becomes ``"2"``, ``1.5`` ``"1.5"``, ``True`` ``"true"``.
    """
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return value


#: Header values and query parameters: text, numbers and booleans converted (as_text).
_Text = Annotated[str, BeforeValidator(as_text)]

_Subject = Annotated[str, Field(min_length=1, max_length=1024, pattern=_SUBJECT_RE.pattern,
                                description="A NATS subject without wildcards.")]
_Headers = Annotated[dict[str, _Text], Field(description="Headers sent with the message.")]


class RequestInput(BaseModel):
    """Input of ``natsflow.request``: a NATS request; the reply becomes the step output.

    ``payload`` is sent as compact JSON, except that a string is sent as its UTF-8 text
    and ``null`` as an empty message. The reply is decoded as JSON when it parses, else
    as UTF-8 text; an empty reply is ``null``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: _Subject
    payload: JsonValue = None
    headers: _Headers = Field(default_factory=dict)
    timeout: float = Field(default=5.0, gt=0, le=3600, description="Seconds to wait.")


class HttpInput(BaseModel):
    """Input of ``natsflow.http``: an HTTP call; the response body becomes the step output.

    ``body``: a string is sent as its UTF-8 text (``text/plain`` unless ``headers`` say
    otherwise), any other JSON value as JSON (``application/json``), ``null`` as no body.
    ``expect``: the statuses that count as success; empty means any 2xx.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: Annotated[str, Field(min_length=8, max_length=8192, pattern=_HTTP_URL_RE.pattern,
                              description="An http:// or https:// URL.")]
    headers: _Headers = Field(default_factory=dict)
    query: dict[str, _Text] = Field(default_factory=dict, description="Query parameters, "
                                    "added to those already in the URL.")
    body: JsonValue = None
    expect: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, description="Statuses that succeed; empty = any 2xx.")
    timeout: float = Field(default=30.0, gt=0, le=3600, description="Seconds for the whole "
                           "call, body included.")


class PublishInput(BaseModel):
    """Input of ``natsflow.publish``: publish one message.

    ``payload`` is encoded as for :class:`RequestInput`. With ``stream`` the message is
    published with JetStream and the step waits for the stream's ack (deduplicated per
    attempt with ``Nats-Msg-Id``); the output then names the stream and sequence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: _Subject
    payload: JsonValue = None
    headers: _Headers = Field(default_factory=dict)
    stream: bool = False
