"""Request bodies: read within a size limit, parse JSON, validate against the contracts.

Bodies are validated here rather than by FastAPI so that every way a config can be wrong
(bad JSON, too large, a wrong field, an invalid step graph raised from inside model
validation) becomes a natsflow error with a code, and from there one problem document.
Rules beyond the models (a batch template must make a valid workflow) are the
orchestrator's, which answers them with the same codes.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import yaml
from fastapi import Request
from pydantic import BaseModel, ValidationError

from contracts.definitions import RunDefinition
from contracts.errors import InvalidRequest, PayloadTooLarge, validation_failed
from contracts.messages import BatchConfig
from contracts.models import WorkflowConfig

_M = TypeVar("_M", bound=BaseModel)

__all__ = ["read_batch_config", "read_body", "read_create_body", "read_json",
           "read_model", "read_workflow_config", "read_yaml_or_json"]


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
    """
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if optional:
            return None
        raise InvalidRequest("request body is empty; expected a JSON object")
    return read_yaml_or_json(raw, "application/json")


def read_create_body(data: Any) -> WorkflowConfig | RunDefinition:
    """``POST /workflows``: a whole WorkflowConfig, or a run of a stored definition."""
    if isinstance(data, dict) and "definition" in data and "steps" not in data:
        try:
            return RunDefinition.model_validate(data)
        except ValidationError as exc:
            raise validation_failed(exc) from None
    return read_workflow_config(data)


def read_yaml_or_json(raw: bytes, content_type: str) -> Any:
    """A body in YAML (``application/yaml``, ``text/yaml``) or JSON."""
    if "yaml" in content_type:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InvalidRequest(f"request body is not valid YAML: {exc}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


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
