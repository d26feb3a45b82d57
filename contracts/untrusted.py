"""Data from clients, checked before anything uses it: plain JSON and alias-free YAML.

JSON has no NaN or Infinity, but Python's ``json`` and pydantic read them (and ``1e999``
as infinity) and write them back as ``null``: a value would change silently on its way
to the store. Deep nesting overflows serializers (pydantic gives up at about 255
levels, the NATS API's parser at about 200). YAML aliases let a few hundred bytes expand
to gigabytes ("billion laughs"). So every entry point -- the gateway's bodies, the NATS
API, a submitted :class:`~contracts.models.WorkflowConfig`, the CLI's files -- refuses
them here, naming the field, before anything is validated or serialized.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import yaml
from yaml.events import AliasEvent
from yaml.nodes import Node

from .errors import FieldError, InvalidRequest, ValidationFailed

__all__ = [
    "MAX_JSON_DEPTH",
    "check_json_bytes",
    "check_json_value",
    "load_json",
    "load_yaml",
    "too_deep",
]

#: Most levels of objects and arrays in a request, counted from the document's root
#: (``{"input": {}}`` is 2 levels deep); far below what the serializers can take.
MAX_JSON_DEPTH: Final = 64


def _loc(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in parts) or "(body)"


def _refused(parts: tuple[str | int, ...], message: str, kind: str) -> ValidationFailed:
    where = _loc(parts)
    return ValidationFailed(f"{where}: {message}", field=where,
                            errors=[FieldError(loc=where, message=message, type=kind)],
                            details={"max_depth": MAX_JSON_DEPTH} if kind == "too_deep"
                            else None)


#: A too deep value is named by its first few levels: the full path would be as long
#: as the limit, and the field it starts in is what the client needs to find it.
_DEEP_LOC_PARTS: Final = 8


def too_deep(parts: tuple[str | int, ...] = ()) -> ValidationFailed:
    """The error for a value nested deeper than :data:`MAX_JSON_DEPTH` at ``parts``."""
    return _refused(parts[:_DEEP_LOC_PARTS],
                    f"nested deeper than the limit of {MAX_JSON_DEPTH} levels", "too_deep")


def check_json_value(value: Any, *, loc: tuple[str | int, ...] = (),
                     envelope: bool = False) -> None:
    """Refuse non-finite numbers and nesting deeper than :data:`MAX_JSON_DEPTH`.

    Args:
        value: Parsed JSON (or YAML): dicts, lists, strings, numbers, bools, None.
        loc: Where ``value`` sits, put in front of every reported location.
        envelope: ``value`` is a request wrapping the client's document (a NATS API
            request around a config or a payload): its own level is not counted, so
            what the gateway accepted is never refused by the API for its wrapping.

    Raises:
        ValidationFailed: naming the first offending field (``input.x``; ``(body)``
            for the root) and, for nesting, the limit (``details.max_depth``).
    """
    # Iterative, so a deep value cannot exhaust the interpreter's stack while checked.
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, loc, -1 if envelope else 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise _refused(where, f"{item!r} is not a JSON number (finite numbers only)",
                               "finite_number")
        elif isinstance(item, dict | list):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise too_deep(where)
            children = item.items() if isinstance(item, dict) else enumerate(item)
            # Reversed onto the stack, so the first offending field in document order
            # is the one reported.
            stack.extend((child, (*where, key), depth)
                         for key, child in reversed(list(children)))


def check_json_bytes(data: bytes, *, envelope: bool = True) -> None:
    """:func:`check_json_value` on a raw JSON document (a NATS API request).

    A document that is not JSON at all passes: the model's own parser says what is
    wrong with it.

    Raises:
        ValidationFailed: as :func:`check_json_value`.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise too_deep() from None
    except ValueError:
        return
    check_json_value(value, envelope=envelope)


def load_json(raw: bytes | str) -> Any:
    """Parse a client's JSON document and :func:`check_json_value` it.

    Raises:
        InvalidRequest: it is not JSON (or so deep that the parser gives up).
        ValidationFailed: a non-finite number, or nesting over :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"request body is not valid JSON: nested deeper than the "
                             f"limit of {MAX_JSON_DEPTH} levels",
                             details={"max_depth": MAX_JSON_DEPTH}) from None
    except ValueError as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    check_json_value(value)
    return value


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: each node is written out once.

    An alias is how a short document expands without bound; an anchor alone is inert.
    """

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed: write the value "
                "out in full", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(raw: bytes | str, *, source: str = "request body") -> Any:
    """Parse a client's YAML document (no aliases) and :func:`check_json_value` it.

    Args:
        raw: The document.
        source: What to call it in errors (a file name for the CLI).

    Raises:
        InvalidRequest: it is not YAML, uses an alias, or is too deep to parse.
        ValidationFailed: a non-finite number (``.nan``, ``.inf``), or nesting over
            :data:`MAX_JSON_DEPTH`.
    """
    try:
        # Not yaml.load: the loader class is safe, and it refuses aliases.
        value = yaml.load(raw, Loader=_NoAliasLoader)
    except RecursionError:
        raise InvalidRequest(f"{source} is not valid YAML: nested deeper than the limit "
                             f"of {MAX_JSON_DEPTH} levels",
                             details={"max_depth": MAX_JSON_DEPTH}) from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source} is not valid YAML: {' '.join(str(exc).split())}"
                             ) from None
    check_json_value(value)
    return value
