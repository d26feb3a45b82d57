"""RFC 9457 problem documents: the one table from natsflow error codes to HTTP statuses.

Every error the gateway answers is ``application/problem+json``. natsflow errors keep
their stable ``code`` as an extension member, next to ``step``, ``field`` and ``errors``
when they name them; anything that is not a natsflow error becomes a code-less problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import (
    AlreadyFinished,
    BatchNotFound,
    ConfigMismatch,
    Conflict,
    DefinitionNotFound,
    EgressRefused,
    EngineTimeout,
    ExpressionError,
    FieldError,
    Forbidden,
    IdConflict,
    InvalidGraph,
    InvalidRequest,
    InvalidState,
    NamespaceForbidden,
    NatsAuthFailed,
    NatsflowError,
    NotFound,
    PayloadTooLarge,
    SchemaMismatch,
    TooManySignals,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    WorkflowNotFound,
    validation_failed,
)

__all__ = [
    "HTTP_BY_CODE",
    "PROBLEM_JSON",
    "PROBLEM_TYPE_PREFIX",
    "ProblemRoute",
    "REALM",
    "HttpMapping",
    "Problem",
    "challenge",
    "http_mapping",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
]

PROBLEM_JSON: Final = "application/problem+json"
#: ``type`` of a natsflow problem is this prefix plus the error code.
PROBLEM_TYPE_PREFIX: Final = "urn:natsflow:problem:"
#: The ``WWW-Authenticate`` challenge of a 401 or 403 (RFC 6750).
REALM: Final = 'Bearer realm="natsflow"'


@dataclass(frozen=True, slots=True)
class HttpMapping:
    """How one natsflow error code is answered over HTTP."""

    status: int
    title: str
    retry_after: int | None = None


#: The one table from natsflow error codes to HTTP. Codes not listed are mapped through
#: the error class hierarchy (see :func:`http_mapping`).
HTTP_BY_CODE: Final[Mapping[str, HttpMapping]] = {
    InvalidRequest.code: HttpMapping(400, "Invalid request"),
    # Every invalid request is a 400, as in the REST contract natsflow grew from; the
    # code (and `errors`) says what was wrong.
    ValidationFailed.code: HttpMapping(400, "Validation failed"),
    InvalidGraph.code: HttpMapping(400, "Invalid workflow graph"),
    ExpressionError.code: HttpMapping(400, "Invalid expression"),
    SchemaMismatch.code: HttpMapping(400, "Does not match its JSON Schema"),
    PayloadTooLarge.code: HttpMapping(413, "Payload too large"),
    NotFound.code: HttpMapping(404, "Not found"),
    WorkflowNotFound.code: HttpMapping(404, "Workflow not found"),
    BatchNotFound.code: HttpMapping(404, "Batch not found"),
    DefinitionNotFound.code: HttpMapping(404, "Definition not found"),
    Conflict.code: HttpMapping(409, "Conflict"),
    IdConflict.code: HttpMapping(409, "Id already used by a different config"),
    AlreadyFinished.code: HttpMapping(409, "Already finished"),
    TooManySignals.code: HttpMapping(409, "Too many signals waiting"),
    InvalidState.code: HttpMapping(409, "Not allowed in this state"),
    Unavailable.code: HttpMapping(503, "Service unavailable", retry_after=2),
    EngineTimeout.code: HttpMapping(503, "Orchestrator did not answer in time", retry_after=5),
    # The gateway's own credentials: no use retrying before an operator fixes them.
    NatsAuthFailed.code: HttpMapping(503, "NATS refused the gateway's credentials"),
    # A start-up error of a service; should one ever reach a client, NATS is not fit yet.
    ConfigMismatch.code: HttpMapping(503, "NATS is not set up as natsflow needs",
                                     retry_after=30),
    # No key, or one that is unknown, revoked or expired (RFC 6750's invalid_token).
    Unauthenticated.code: HttpMapping(401, "Unauthenticated"),
    # A valid key without the scope the route needs (RFC 6750's insufficient_scope).
    Forbidden.code: HttpMapping(403, "Forbidden"),
    # A step's or a webhook's error today; a call natsflow will not make for the client.
    EgressRefused.code: HttpMapping(403, "Outbound call refused"),
    NamespaceForbidden.code: HttpMapping(403, "Namespace outside the caller's scope"),
}

_INTERNAL: Final = HttpMapping(500, "Internal server error")


def http_mapping(err: NatsflowError) -> HttpMapping:
    """The HTTP answer for an error: by its code, else by its nearest known class.

    An error rebuilt from an unknown wire code is a plain :class:`NatsflowError`; a
    subclass added to ``contracts`` later still maps through its base class.
    """
    found = HTTP_BY_CODE.get(err.code)
    if found is not None:
        return found
    for cls in type(err).__mro__:
        if isinstance(cls, type) and issubclass(cls, NatsflowError):
            found = HTTP_BY_CODE.get(cls.code)
            if found is not None:
                return found
    return _INTERNAL


class Problem(BaseModel):
    """An RFC 9457 problem document with natsflow's extension members."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(default="about:blank",
                      description="`urn:natsflow:problem:<code>` for natsflow errors.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    code: str | None = Field(default=None, description="Stable natsflow error code.")
    retryable: bool | None = None
    step: str | None = Field(default=None, description="The step the error is about.")
    field: str | None = Field(default=None, description="The field the error is about.")
    errors: list[FieldError] | None = Field(default=None, description="Per-field errors.")
    details: dict[str, Any] | None = None


class _ProblemJSONResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem_response(problem: Problem, *, retry_after: int | None = None,
                     headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A ``application/problem+json`` response carrying ``problem``."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return _ProblemJSONResponse(problem.model_dump(mode="json", exclude_none=True),
                                status_code=problem.status, headers=all_headers)


def _problem_of(err: NatsflowError, instance: str) -> tuple[Problem, HttpMapping]:
    mapping = http_mapping(err)
    errors = err.errors
    if errors is None and err.field is not None and mapping.status == 400:
        # Every 400 lists its fields, so clients read one member whatever the cause.
        errors = [FieldError(loc=err.field, message=err.message, type=err.code)]
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + err.code,
        title=mapping.title,
        status=mapping.status,
        detail=err.message,
        instance=instance,
        code=err.code,
        retryable=err.retryable,
        step=err.step,
        field=err.field,
        errors=errors,
        details=err.details,
    )
    return problem, mapping


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


#: What the gateway answers to an invalid request instead of FastAPI's 422.
_CLIENT_ERROR: Final = {
    "description": "Client error: a problem document (an invalid request is a 400).",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


class ProblemRoute(APIRoute):
    """A route that documents its client errors as problem documents.

    FastAPI documents a ``422`` with its own ``HTTPValidationError`` body on every
    operation that takes parameters, unless the operation declares ``4XX`` (or
    ``default``) itself; the gateway answers those errors ``400`` with a problem
    (:func:`install_problem_handlers`), each route declares its ``400`` and the statuses
    it knows, and ``4XX`` says that any other client error is a problem too.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if get_flat_params(self.dependant) or self.body_field is not None:
            self.responses = {**self.responses, "4XX": _CLIENT_ERROR}


def challenge(err: NatsflowError) -> str | None:
    """The ``WWW-Authenticate`` value a refusal of credentials answers with, else None."""
    if isinstance(err, Forbidden):
        scope = (err.details or {}).get("scope", "")
        return f'{REALM}, error="insufficient_scope", scope="{scope}"'
    if isinstance(err, Unauthenticated):
        return f'{REALM}, error="invalid_token"' if err.invalid_token else REALM
    return None


async def _on_natsflow_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NatsflowError)
    problem, mapping = _problem_of(exc, request.url.path)
    www = challenge(exc)
    return problem_response(problem, retry_after=mapping.retry_after,
                            headers={"WWW-Authenticate": www} if www else None)


class _RequestErrors:
    """FastAPI's request errors as :func:`contracts.errors.validation_failed` reads them.

    FastAPI prefixes locations with where the value came from; ``body`` is dropped so
    body fields read as in the model (``steps.0.id``), ``path``/``header`` are kept.
    """

    def __init__(self, exc: RequestValidationError) -> None:
        self._errors = [
            {**e, "loc": tuple(e.get("loc", ()))[1:]
             if tuple(e.get("loc", ()))[:1] == ("body",) else tuple(e.get("loc", ()))}
            for e in exc.errors()
        ]

    def errors(self, *, include_url: bool = True) -> list[dict[str, Any]]:
        return self._errors


async def _on_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _on_natsflow_error(request, validation_failed(_RequestErrors(exc)))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    return problem_response(
        Problem(title=phrase, status=exc.status_code, detail=detail,
                instance=request.url.path),
        headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware calls this and re-raises, so the server logs the
    # traceback; the client sees none of it.
    return problem_response(Problem(title=_INTERNAL.title, status=_INTERNAL.status,
                                    detail="an unexpected error occurred",
                                    instance=request.url.path))


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error ``app`` answers a problem document."""
    app.add_exception_handler(NatsflowError, _on_natsflow_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
