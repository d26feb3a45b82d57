"""The files and values the CLI reads: workflow configs (YAML or JSON), signal payloads.

Each is checked as the gateway checks a body (:mod:`contracts.untrusted`: no YAML
aliases, no NaN, bounded nesting) before it is validated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import InvalidRequest, ValidationFailed
from contracts.errors import validation_failed as errors_of
from contracts.models import WorkflowConfig
from contracts.untrusted import check_json_value, load_yaml

__all__ = ["load_config", "load_mapping", "parse_payload", "validation_failed"]


def validation_failed(exc: ValidationError, what: str) -> ValidationFailed:
    """A pydantic error as natsflow's ``validation-failed``, one FieldError per field."""
    errors = errors_of(exc).errors or []
    return ValidationFailed(f"{what} is not a valid workflow config", errors=errors,
                            field=errors[0].loc if len(errors) == 1 else None)


def load_config(path: Path) -> WorkflowConfig:
    """Read a WorkflowConfig from a YAML or JSON file.

    Raises:
        InvalidRequest: the file cannot be read or parsed.
        ValidationFailed: a field is wrong.
        InvalidGraph: the step graph is wrong.
    """
    data = load_mapping(path)
    try:
        return WorkflowConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, str(path)) from None


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a mapping from a YAML or JSON file (by its suffix).

    Raises:
        InvalidRequest: the file cannot be read or parsed, or is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"{path} is not valid JSON: {' '.join(str(exc).split())}"
                                 ) from None
        check_json_value(data)
    else:
        # No aliases: a short file could otherwise expand without bound.
        data = load_yaml(text, source=str(path))
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path} must hold a mapping (a workflow config)")
    return data


def parse_payload(text: str | None) -> Any:
    """A signal's payload from the command line: JSON, ``@path`` of a JSON file, or None.

    Raises:
        InvalidRequest: the file cannot be read or the text is not JSON.
    """
    if text is None:
        return None
    where = "--payload"
    if text.startswith("@"):
        path = Path(text[1:])
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read {path}: {exc}", field="--payload") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{where} is not valid JSON: {exc}", field="--payload") from None
