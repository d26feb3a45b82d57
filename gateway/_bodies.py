"""Request bodies: read within a size limit, parse JSON, validate against the contracts.

Bodies are validated here rather than by FastAPI so that every way a config can be wrong
(bad JSON, too large, a wrong field, an invalid step graph raised from inside model
validation) becomes a natsflow error with a code, and from there one problem document.
Rules beyond the models (a batch template must make a valid workflow) are the
orchestrator's, which answers them with the same codes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from contracts.definitions import RunDefinition
from contracts.errors import (
    FieldError,
    InvalidRequest,
    PayloadTooLarge,
    ValidationFailed,
    validation_failed,
)
from contracts.messages import BatchConfig
from contracts.models import WorkflowConfig
from contracts.untrusted import load_json, load_yaml

_M = TypeVar("_M", bound=BaseModel)

__all__ = ["read_batch_config", "read_body", "read_create_body", "read_json",
           "read_model", "read_object", "read_workflow_config", "read_yaml_or_json"]


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


async def read_json(request: Request, *, limit: int, optional: bool = False) -> Any:
    """The request body parsed as JSON, refusing more than ``limit`` bytes.

    An empty body is None when ``optional``, else an error.

    Raises:
        PayloadTooLarge: the body (or its announced Content-Length) is over ``limit``.
        InvalidRequest: the body is empty or not JSON.
        ValidationFailed: a number is not finite or the nesting is too deep.
    """
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if optional:
            return None
        raise InvalidRequest("request body is empty; expected a JSON object")
    return read_yaml_or_json(raw, "application/json")


async def read_object(request: Request, *, limit: int) -> dict[str, Any]:
    """An optional JSON object body: ``{}`` when empty, else an object.

    Anything else (``[]``, ``null``, ``0``, ``false``, a string) is refused rather
    than taken for "no options": a bulk stop with a mangled body must not stop every
    workflow.

    Raises:
        PayloadTooLarge, InvalidRequest: as :func:`read_json`.
        ValidationFailed: the body is not a JSON object (or as :func:`read_json`).
    """
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        return {}
    data = read_yaml_or_json(raw, "application/json")
    if not isinstance(data, dict):
        message = f"the body must be a JSON object (or empty), not {_json_type(data)}"
        raise ValidationFailed(f"(body): {message}", field="(body)", errors=[
            FieldError(loc="(body)", message=message, type="dict_type")])
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def read_create_body(data: Any) -> WorkflowConfig | RunDefinition:
    """``POST /workflows``: a whole WorkflowConfig, or a run of a stored definition."""
    if isinstance(data, dict) and "definition" in data and "steps" not in data:
        try:
            return RunDefinition.model_validate(data)
        except ValidationError as exc:
            raise validation_failed(exc) from None
    return read_workflow_config(data)


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


def read_model(model: type[_M], data: Any) -> _M:
    """Validate a parsed body as ``model``, each wrong field named."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def read_workflow_config(data: Any) -> WorkflowConfig:
    """Validate a parsed body as a :class:`WorkflowConfig`.

    Raises:
        ValidationFailed: fields are wrong (each one named).
        InvalidGraph: the step graph is wrong (step and field named).
    """
    try:
        return WorkflowConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def read_batch_config(data: Any) -> BatchConfig:
    """Validate a parsed body as a :class:`BatchConfig`.

    Raises:
        ValidationFailed: fields are wrong (each one named).
    """
    try:
        return BatchConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from None
