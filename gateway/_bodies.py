"""Request bodies: each route's size limit, the decoding FastAPI does not do, the HTTP models.

FastAPI validates each body against the model in the route's signature (so the OpenAPI
document is what it derives). What comes before that is here, in the route class
(:class:`DecodedBodyRoute`), because it must happen before FastAPI reads the body:

* the size limit of :data:`BODY_RULES` (413 ``payload-too-large``), checked against
  ``Content-Length`` and while streaming, so a body is never buffered past it;
* JSON through :func:`contracts.untrusted.load_json` (no NaN or Infinity, bounded
  nesting; each refusal names the field), or YAML where the route takes it, whatever
  the ``Content-Type`` says (as the gateway always did): FastAPI is then handed the
  decoded document as JSON;
* what the schema allows but a documented 400 refuses: an empty body where one is
  required (``invalid-request``), and a body that is not an object where the route's
  body is a model or a mapping (``null`` or ``[]`` must never mean "no options": a
  bulk stop with a mangled body must not stop every workflow).

Every route with a body has a row in :data:`BODY_RULES`, or the app cannot be built.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, get_origin

from fastapi import Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag
from starlette.types import Receive, Scope

from contracts.definitions import RunDefinition
from contracts.errors import (
    FieldError,
    InvalidRequest,
    NatsflowError,
    PayloadTooLarge,
    ValidationFailed,
)
from contracts.messages import MAX_BATCH_BYTES, ListWorkflowsRequest
from contracts.models import MAX_CONFIG_BYTES, WorkflowConfig
from contracts.untrusted import load_json, load_yaml

from ._problems import ProblemRoute

__all__ = [
    "BODY_RULES",
    "MAX_SIGNAL_BYTES",
    "BodyRule",
    "BulkBody",
    "CreateWorkflowBody",
    "DecodedBodyRoute",
    "RerunBody",
    "RetryBody",
    "read_body",
    "read_yaml_or_json",
]

#: Largest signal payload accepted over HTTP.
MAX_SIGNAL_BYTES: Final = 256 * 1024
_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class BodyRule:
    """How a route's body is read before FastAPI validates it.

    Args:
        limit: Most bytes accepted (413 above).
        yaml: YAML is taken too, when the ``Content-Type`` says so.
    """

    limit: int
    yaml: bool = False


#: Every route that takes a body (method, path template) and how it is read.
BODY_RULES: Final[Mapping[tuple[str, str], BodyRule]] = {
    ("POST", "/workflows"): BodyRule(MAX_CONFIG_BYTES),
    ("POST", "/workflows/bulk/{operation}"): BodyRule(64 * 1024),
    ("POST", "/workflows/{workflow_id}/signals/{name}"): BodyRule(MAX_SIGNAL_BYTES),
    ("POST", "/workflows/{workflow_id}/retry"): BodyRule(MAX_CONFIG_BYTES),
    ("POST", "/workflows/{workflow_id}/rerun"): BodyRule(MAX_CONFIG_BYTES),
    ("POST", "/batches"): BodyRule(MAX_BATCH_BYTES),
    ("PUT", "/definitions/{name}"): BodyRule(MAX_CONFIG_BYTES, yaml=True),
}


def body_rule(method: str, path: str) -> BodyRule:
    """The rule of a route with a body, from :data:`BODY_RULES`.

    Raises:
        LookupError: the route is not in the table.
    """
    try:
        return BODY_RULES[(method.upper(), path)]
    except KeyError:
        raise LookupError(f"route {method.upper()} {path} takes a body but has no entry in "
                          "gateway._bodies.BODY_RULES: give it a size limit") from None


# -- the HTTP bodies -----------------------------------------------------------------------
# The NATS requests without what the URL (the id, the operation) or the API key (the
# namespaces) says; tests/test_gateway_bodies.py keeps their fields equal.

_Body = ConfigDict(extra="forbid", frozen=True)


class RetryBody(BaseModel):
    """``POST /workflows/{id}/retry`` (optional): new inputs of the retried steps."""

    model_config = _Body

    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RerunBody(BaseModel):
    """``POST /workflows/{id}/rerun`` (optional): what the new run changes."""

    model_config = _Body

    input: dict[str, Any] | None = None
    from_step: str | None = Field(default=None, max_length=128)
    new_id: str | None = Field(default=None, min_length=1, max_length=128,
                               pattern=r"^[A-Za-z0-9_-]+$")


class BulkBody(BaseModel):
    """``POST /workflows/bulk/{operation}``: which workflows, or ``"all": true``."""

    model_config = _Body

    filter: ListWorkflowsRequest = Field(default_factory=ListWorkflowsRequest,
                                         description="Which workflows (cursor and limit "
                                         "are ignored: every match is taken).")
    all: bool = Field(default=False, description="Every workflow, with no filter: "
                      "required when `filter` selects on nothing, refused with one.")
    dry_run: bool = Field(default=False, description="Only report what would be touched.")
    max_workflows: int = Field(default=10_000, ge=1, le=100_000,
                               description="Refuse to touch more than this many.")


def _creates_from_definition(data: Any) -> bool:
    return isinstance(data, dict) and "definition" in data and "steps" not in data


def _create_body(data: Any) -> WorkflowConfig | RunDefinition:
    # By shape, not as a union: each field error is named as in its own model
    # (`steps.0.id`), without a union member's tag in front.
    if _creates_from_definition(data):
        return RunDefinition.model_validate(data)
    return WorkflowConfig.model_validate(data)


_Either = Annotated[
    Annotated[WorkflowConfig, Tag("config")] | Annotated[RunDefinition, Tag("definition")],
    Discriminator(lambda data: "definition" if _creates_from_definition(data) else "config")]

#: ``POST /workflows``: a whole WorkflowConfig, or a run of a stored definition
#: (``definition`` and no ``steps``); documented as ``oneOf`` the two.
CreateWorkflowBody = Annotated[WorkflowConfig | RunDefinition,
                               PlainValidator(_create_body, json_schema_input_type=_Either)]


# -- reading and decoding ------------------------------------------------------------------


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes.

    Raises:
        PayloadTooLarge: the body (or its announced Content-Length) is over ``limit``.
    """
    too_large = PayloadTooLarge(f"request body is larger than {limit} bytes",
                                details={"limit": limit})
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    # Streamed, so a body without Content-Length cannot make us buffer more than limit.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def read_yaml_or_json(raw: bytes, content_type: str) -> Any:
    """A body in YAML (``application/yaml``, ``text/yaml``; no aliases) or JSON.

    Raises:
        InvalidRequest: the body does not parse (or uses a YAML alias).
        ValidationFailed: a number is not finite or the nesting is too deep (see
            :mod:`contracts.untrusted`); nothing has been serialized yet.
    """
    if "yaml" in content_type:
        return load_yaml(raw)
    return load_json(raw)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def _not_an_object(value: Any, *, required: bool) -> ValidationFailed:
    message = (f"the body must be a JSON object{'' if required else ' (or empty)'}, "
               f"not {_json_type(value)}")
    return ValidationFailed(f"(body): {message}", field="(body)", errors=[
        FieldError(loc="(body)", message=message, type="dict_type")])


class _DecodedRequest(Request):
    """The request with its body read and decoded: FastAPI takes the document as JSON."""

    def __init__(self, scope: Scope, receive: Receive, *, raw: bytes, document: Any) -> None:
        # FastAPI parses only a body typed JSON; this one is decoded already (JSON or
        # YAML, whatever it was typed), so it is typed JSON for FastAPI.
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        super().__init__({**scope, "headers": [*headers, (b"content-type", _JSON.encode())]},
                         receive)
        self._raw = raw
        self._document = document

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._document


@dataclass(frozen=True, slots=True)
class _Decoder:
    rule: BodyRule
    required: bool
    object_only: bool

    async def __call__(self, request: Request) -> Request:
        raw = await read_body(request, limit=self.rule.limit)
        if not raw.strip():
            if self.required:
                raise InvalidRequest("request body is empty; expected a JSON object")
            # No body: FastAPI gives the parameter its default.
            return _DecodedRequest(request.scope, request.receive, raw=b"", document=None)
        content_type = request.headers.get("content-type", _JSON) if self.rule.yaml else _JSON
        document = read_yaml_or_json(raw, content_type)
        if self.object_only and not isinstance(document, dict):
            raise _not_an_object(document, required=self.required)
        return _DecodedRequest(request.scope, request.receive, raw=raw, document=document)


def _is_object(annotation: Any) -> bool:
    if get_origin(annotation) is dict or annotation is dict:
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


#: Where a body that could not be read or decoded leaves its error (ASGI scope key).
_BODY_ERROR: Final = "natsflow.body_error"


def _refuse_undecoded_body(request: Request) -> None:
    err = request.scope.get(_BODY_ERROR)
    if isinstance(err, NatsflowError):
        raise err


class DecodedBodyRoute(ProblemRoute):
    """A route whose body (if it takes one) is read and decoded by its :data:`BODY_RULES`
    row before FastAPI validates it.

    FastAPI reads a body before it solves the route's dependencies, the scope check
    among them; a body that cannot be read or decoded is refused by the route's last
    dependency instead, so that a request without a valid key is a 401 whatever its body.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["dependencies"] = [*(kwargs.get("dependencies") or []),
                                  Depends(_refuse_undecoded_body)]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        (method,) = self.methods or {"GET"}
        info = self.body_field.field_info
        decode = _Decoder(body_rule(method, self.path), required=info.is_required(),
                          object_only=_is_object(info.annotation))

        async def decode_then_handle(request: Request) -> Response:
            try:
                decoded = await decode(request)
            except NatsflowError as err:
                # Answered after the scope check (a caller without a key learns nothing
                # about the body): by _refuse_undecoded_body, the route's last dependency.
                request.scope[_BODY_ERROR] = err
                decoded = _DecodedRequest(request.scope, request.receive, raw=b"",
                                          document=None)
            return await handler(decoded)

        return decode_then_handle
