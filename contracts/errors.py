"""natsflow's errors: data with stable, kebab-case codes.

Every error a client can see is one of these. Each has a ``code`` (stable, documented,
what programs match on), a ``retryable`` flag, and renders to :class:`ErrorInfo`, the
payload carried by NATS error replies, dead letters and RFC 9457 problem documents.

Hierarchy::

    NatsflowError
    ├── InvalidRequest            invalid-request      a client sent something unusable
    │   ├── ValidationFailed      validation-failed    a field is wrong (names the field)
    │   ├── InvalidGraph          invalid-graph        the step graph is wrong (names the step)
    │   ├── ExpressionError       expression-error     a CEL expression does not parse or fails
    │   ├── SchemaMismatch        schema-mismatch      a value does not match its JSON Schema
    │   └── PayloadTooLarge       payload-too-large    over the size limit
    ├── NotFound                  not-found
    │   ├── WorkflowNotFound      workflow-not-found
    │   ├── BatchNotFound         batch-not-found
    │   ├── DefinitionNotFound    definition-not-found
    │   └── ScheduleNotFound      schedule-not-found
    │   └── TriggerNotFound       trigger-not-found
    ├── Conflict                  conflict             the request clashes with current state
    │   ├── IdConflict            id-conflict          same id, different config
    │   ├── AlreadyFinished       already-finished     the workflow/batch is terminal
    │   ├── InvalidState          invalid-state        not allowed in the workflow's state
    │   └── TooManySignals        too-many-signals     signals pile up with no wait step
    ├── Unavailable               unavailable          NATS or the engine is unreachable (retryable)
    │   ├── EngineTimeout         engine-timeout       no answer in time (retryable)
    │   └── NatsAuthFailed        nats-auth-failed     NATS refuses the credentials (not
    │                                                  retryable until they are fixed)
    ├── ConfigMismatch            config-mismatch      a stream, bucket or consumer in NATS is
    │                                                  set up in a way natsflow cannot work with
    ├── Unauthenticated           unauthenticated      no API key, or one that is not valid
    │                                                  (unknown, revoked or expired)
    ├── Forbidden                 forbidden            the API key lacks the scope the request needs
    ├── EgressRefused             egress-refused       an outbound call (http step, webhook) to a
    │                                                  host the egress policy refuses
    ├── NamespaceForbidden        namespace-forbidden  a create in a namespace outside the
    │                                                  caller's scope
    └── RecordUnreadable          record-unreadable    a stored record is not natsflow's (written
                                                       by something else): it cannot be read

Errors of *steps* (reported by workers) are not exceptions here: they are
:class:`ErrorInfo` values inside results and statuses, with codes chosen by the worker,
plus these engine codes: ``step-timeout``, ``schedule-to-start-timeout``, ``cancelled``,
``input-error``, ``output-too-large``, ``worker-error``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlreadyFinished",
    "BatchNotFound",
    "ConfigMismatch",
    "Conflict",
    "DefinitionNotFound",
    "EgressRefused",
    "EngineTimeout",
    "ExpressionError",
    "ErrorInfo",
    "FieldError",
    "Forbidden",
    "IdConflict",
    "InvalidGraph",
    "InvalidRequest",
    "InvalidState",
    "NamespaceForbidden",
    "NatsAuthFailed",
    "NatsflowError",
    "NotFound",
    "PayloadTooLarge",
    "RecordUnreadable",
    "ScheduleNotFound",
    "SchemaMismatch",
    "TooManySignals",
    "TriggerNotFound",
    "Unauthenticated",
    "Unavailable",
    "ValidationFailed",
    "WorkflowNotFound",
    "error_from_info",
    "validation_failed",
]


class FieldError(BaseModel):
    """One offending field: where (a JSON path) and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loc: str = Field(description="Dotted path of the field, e.g. `steps.2.depends_on`.")
    message: str
    type: str = Field(default="value_error", description="pydantic error type")


class ErrorInfo(BaseModel):
    """An error as data: what NATS replies, events, statuses and dead letters carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(description="Stable kebab-case code, e.g. `invalid-graph`.")
    message: str
    retryable: bool = False
    step: str | None = Field(default=None, description="The step the error is about.")
    field: str | None = Field(default=None, description="The field the error is about.")
    errors: list[FieldError] | None = Field(default=None, description="Per-field errors.")
    details: dict[str, Any] | None = None


class NatsflowError(Exception):
    """Base of every natsflow error."""

    code: ClassVar[str] = "natsflow-error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        field: str | None = None,
        errors: list[FieldError] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.field = field
        self.errors = errors
        self.details = details

    def info(self) -> ErrorInfo:
        """This error as an :class:`ErrorInfo` value."""
        return ErrorInfo(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            step=self.step,
            field=self.field,
            errors=self.errors,
            details=self.details,
        )


class InvalidRequest(NatsflowError):
    """The request cannot be used as sent."""

    code = "invalid-request"


class ValidationFailed(InvalidRequest):
    """One or more fields are invalid."""

    code = "validation-failed"


class InvalidGraph(InvalidRequest):
    """The step graph is invalid: unknown dependency, duplicate id, cycle, no steps."""

    code = "invalid-graph"


class ExpressionError(InvalidRequest):
    """A CEL expression does not parse, uses an unknown variable, or fails at run time."""

    code = "expression-error"

    def __init__(self, message: str, *, expression: str = "", field: str | None = None,
                 step: str | None = None) -> None:
        super().__init__(message, field=field, step=step,
                         details={"expression": expression} if expression else None)
        self.expression = expression


class SchemaMismatch(InvalidRequest):
    """A workflow's input (or a step's output) does not match its JSON Schema."""

    code = "schema-mismatch"


class PayloadTooLarge(InvalidRequest):
    """The request is larger than allowed."""

    code = "payload-too-large"


class NotFound(NatsflowError):
    """No such thing."""

    code = "not-found"


class WorkflowNotFound(NotFound):
    """No workflow with this id."""

    code = "workflow-not-found"


class BatchNotFound(NotFound):
    """No batch with this id."""

    code = "batch-not-found"


class DefinitionNotFound(NotFound):
    """No stored definition of that name (or version)."""

    code = "definition-not-found"


class ScheduleNotFound(NotFound):
    """No schedule of that name (in that namespace)."""

    code = "schedule-not-found"
class TriggerNotFound(NotFound):
    """No trigger by that name (in that namespace)."""

    code = "trigger-not-found"


class Conflict(NatsflowError):
    """The request clashes with the current state."""

    code = "conflict"


class IdConflict(Conflict):
    """A workflow (or batch) with this id exists with a different config."""

    code = "id-conflict"


class AlreadyFinished(Conflict):
    """The workflow or batch has already reached a terminal state."""

    code = "already-finished"


class InvalidState(Conflict):
    """The operation is not allowed in the workflow's current state (the reason says why)."""

    code = "invalid-state"


class TooManySignals(Conflict):
    """Too many signals are kept for wait steps that have not started."""

    code = "too-many-signals"


class Unavailable(NatsflowError):
    """NATS or the orchestrator cannot be reached; try again later."""

    code = "unavailable"
    retryable = True


class EngineTimeout(Unavailable):
    """The orchestrator did not answer in time."""

    code = "engine-timeout"


class NatsAuthFailed(Unavailable):
    """NATS refused the connection's credentials (user and password, token, creds).

    Unavailable to this client all the same (the gateway answers 503), but trying again
    with the same credentials will not help: it is not retryable.
    """

    code = "nats-auth-failed"
    retryable = False


class ConfigMismatch(NatsflowError):
    """What exists in NATS contradicts what natsflow needs (found at start-up).

    ``field`` names the setting, ``details`` says where, what is needed and what is there.
    """

    code = "config-mismatch"


class Unauthenticated(NatsflowError):
    """The request carries no API key, or one that is not valid (unknown, revoked, expired).

    ``invalid_token`` is true when a key was given (the gateway's ``WWW-Authenticate``
    challenge then says ``error="invalid_token"``). The message never repeats the key.
    """

    code = "unauthenticated"

    def __init__(self, message: str, *, invalid_token: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.invalid_token = invalid_token


class Forbidden(NatsflowError):
    """The API key is valid but lacks the scope the request needs (``details.scope``)."""

    code = "forbidden"

class RecordUnreadable(NatsflowError):
    """The stored record of a workflow or batch is not one natsflow wrote (its KV entry
    was overwritten by someone else): it cannot be read, and nothing can act on it."""

    code = "record-unreadable"


class EgressRefused(NatsflowError):
    """An outbound call to where natsflow does not call unless an operator allows it.

    Raised by the egress policy (:mod:`contracts.egress`) for an ``http`` step or a
    webhook; the step fails with this code (not retryable) and a webhook delivery is
    dead-lettered with it. ``details`` holds ``host``, ``rule`` and, for an address rule,
    ``address``.
    """

    code = "egress-refused"


class NamespaceForbidden(NatsflowError):
    """A create (a workflow, a batch, a definition) in a namespace outside the caller's
    ``namespaces`` scope.

    Only creates are refused this way: anything that already exists in a namespace
    outside the scope answers exactly as if it did not exist (``workflow-not-found``,
    ``batch-not-found``, ``definition-not-found``), so its existence is not revealed.
    """

    code = "namespace-forbidden"


def _all_subclasses(cls: type[NatsflowError]) -> list[type[NatsflowError]]:
    out: list[type[NatsflowError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[NatsflowError]] = {c.code: c for c in _all_subclasses(NatsflowError)}


def error_from_info(info: ErrorInfo) -> NatsflowError:
    """Rebuild the exception for an :class:`ErrorInfo` received over the wire.

    Unknown codes become a plain :class:`NatsflowError` that keeps the code.
    """
    cls = _BY_CODE.get(info.code)
    if cls is None:
        err = NatsflowError(info.message, step=info.step, field=info.field, errors=info.errors,
                            details=info.details)
        err.code = info.code  # type: ignore[misc]
        return err
    return cls(info.message, step=info.step, field=info.field, errors=info.errors,
               details=info.details)


#: Tags of the step-kind union (filled in by ``contracts.models``): pydantic puts the
#: tag into error locations (``steps.0.task.input``); clients should see ``steps.0.input``.
STEP_TAGS: set[str] = set()


def _untagged(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    return tuple(p for i, p in enumerate(loc)
                 if not (i >= 2 and p in STEP_TAGS and isinstance(loc[i - 1], int)
                         and loc[i - 2] == "steps"))


def validation_failed(exc: Any, *, loc_prefix: tuple[str | int, ...] = (),
                      drop_first: int = 0) -> ValidationFailed:
    """Turn a pydantic ``ValidationError`` into :class:`ValidationFailed` naming each field.

    Args:
        exc: The pydantic ValidationError.
        loc_prefix: Path to put in front of every location.
        drop_first: How many leading location parts to drop (e.g. FastAPI's ``body``).
    """
    errors: list[FieldError] = []
    for e in exc.errors(include_url=False):
        loc = _untagged((*loc_prefix, *tuple(e.get("loc", ()))[drop_first:]))
        errors.append(FieldError(loc=".".join(str(p) for p in loc) or "(body)",
                                 message=str(e.get("msg", "invalid")),
                                 type=str(e.get("type", "value_error"))))
    first = errors[0] if errors else None
    message = (f"{first.loc}: {first.message}" if first else "invalid request")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ValidationFailed(message, field=first.loc if first else None, errors=errors)
