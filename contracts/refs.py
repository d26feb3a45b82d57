"""The reference form used in step inputs and workflow outputs.

A string may contain ``${path}``, where ``path`` is one of::

    input                     the whole workflow input
    input.a.b                 a field inside it
    steps.<id>.output         the whole output of step <id>
    steps.<id>.output.a.0     a field / list index inside it

A string that is exactly one ``${path}`` is replaced by the value (any JSON type); a
string with text around references gets each value rendered into it (JSON for
non-strings). References are checked when a workflow arrives: a step may only refer to
steps it (transitively) depends on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Ref", "RefError", "find_refs", "parse_ref", "render"]

_REF_RE = re.compile(r"\$\{([^}]*)\}")
_SEG_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class RefError(ValueError):
    """A reference is malformed or cannot be resolved."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference: its root (``input`` or a step id) and the path below it."""

    text: str
    step: str | None
    path: tuple[str, ...]


def parse_ref(text: str) -> Ref:
    """Parse the inside of ``${...}``.

    Raises:
        RefError: the reference is malformed.
    """
    parts = text.strip().split(".")
    if any(not _SEG_RE.match(p) for p in parts):
        raise RefError(f"malformed reference ${{{text}}}")
    if parts[0] == "input":
        return Ref(text=text, step=None, path=tuple(parts[1:]))
    if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
        return Ref(text=text, step=parts[1], path=tuple(parts[3:]))
    raise RefError(
        f"reference ${{{text}}} must start with 'input' or 'steps.<id>.output'"
    )


def find_refs(value: Any) -> Iterator[Ref]:
    """Every reference inside a JSON value (strings, nested lists and objects).

    Raises:
        RefError: a reference is malformed.
    """
    if isinstance(value, str):
        for m in _REF_RE.finditer(value):
            yield parse_ref(m.group(1))
    elif isinstance(value, list):
        for item in value:
            yield from find_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from find_refs(item)


def _lookup(ref: Ref, workflow_input: Any, outputs: Mapping[str, Any]) -> Any:
    if ref.step is None:
        current = workflow_input
    else:
        if ref.step not in outputs:
            raise RefError(f"${{{ref.text}}}: step {ref.step!r} has no output")
        current = outputs[ref.step]
    for seg in ref.path:
        if isinstance(current, dict) and seg in current:
            current = current[seg]
        elif isinstance(current, list) and seg.isdigit() and int(seg) < len(current):
            current = current[int(seg)]
        else:
            raise RefError(f"${{{ref.text}}}: no {seg!r} at that path")
    return current


def render(value: Any, *, workflow_input: Any, outputs: Mapping[str, Any]) -> Any:
    """Replace every reference in ``value``.

    Raises:
        RefError: a reference cannot be resolved.
    """
    if isinstance(value, str):
        whole = _REF_RE.fullmatch(value)
        if whole:
            return _lookup(parse_ref(whole.group(1)), workflow_input, outputs)

        def one(m: re.Match[str]) -> str:
            got = _lookup(parse_ref(m.group(1)), workflow_input, outputs)
            return got if isinstance(got, str) else json.dumps(got)

        return _REF_RE.sub(one, value)
    if isinstance(value, list):
        return [render(v, workflow_input=workflow_input, outputs=outputs) for v in value]
    if isinstance(value, dict):
        return {k: render(v, workflow_input=workflow_input, outputs=outputs)
                for k, v in value.items()}
    return value
