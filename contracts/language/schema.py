"""JSON Schema (draft 2020-12) for a workflow's input and a step's output."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from contracts.errors import FieldError, InvalidGraph, SchemaMismatch

if TYPE_CHECKING:
    from jsonschema.validators import Draft202012Validator

__all__ = ["SchemaMismatch", "check_schema", "validate_instance"]

# jsonschema is imported where it is first used: importing it (and referencing, rpds)
# costs every process ~0.3 s of start-up, and most workflows declare no schema.

_MAX_REPORTED = 20


def check_schema(schema: dict[str, Any], *, field: str) -> None:
    """Is ``schema`` a valid JSON Schema?

    Raises:
        InvalidGraph: it is not (naming ``field``).
    """
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import Draft202012Validator

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidGraph(f"{field} is not a valid JSON Schema: {exc.message}",
                           field=field) from None


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    from jsonschema.validators import Draft202012Validator

    return Draft202012Validator(json.loads(schema_json),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate_instance(instance: Any, schema: dict[str, Any], *, field: str) -> None:
    """Does ``instance`` match ``schema``?

    Raises:
        SchemaMismatch: it does not; ``errors`` name the JSON path of each violation.
    """
    validator = _validator(json.dumps(schema, sort_keys=True))
    found = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not found:
        return
    errors = [FieldError(loc=".".join([field, *(str(p) for p in e.absolute_path)]),
                         message=e.message, type=f"schema.{e.validator}")
              for e in found[:_MAX_REPORTED]]
    first = errors[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise SchemaMismatch(f"{first.loc}: {first.message}{more}", field=first.loc,
                         errors=errors)



