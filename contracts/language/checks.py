"""What is known of a workflow's values before it runs, checked when it arrives.

:func:`contracts.models.check_graph` checks the graph and each expression; this module
turns what it finds wrong with an expression into a validation error, and checks the
values of the steps' fields as far as they are known without the run's data:

* a literal (``duration: 90s``, ``expect: [200]``);
* a template whose expressions read no variable (``"${duration('1h')}"``): it is
  evaluated here, so a failure (``"${1 / 0}"``) or a value of the wrong type is found now;
* the literal text around a template's expressions (the ``orders.`` and ``.new`` of
  ``orders.${input.region}.new``): a subject or URL it can never be is found now.

Each value is held to what the run requires of it: for the built-in steps, the models of
:mod:`contracts.builtins`, through :func:`builtin_input`, the one place a step's fields
become its task input. What is refused here would fail every run; what only the run knows
is left to it (numbers and booleans in headers and query parameters are converted there,
see :func:`contracts.builtins.as_text`).

Every refusal is a pydantic error located at the field (``steps.2.query.q``), so each
entry point answers ``validation-failed`` naming the field and the step.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final, NoReturn

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from contracts.builtins import HttpInput, PublishInput, RequestInput
from contracts.errors import ExpressionError
from contracts.language.expr import evaluate, is_constant, render, split_template

__all__ = [
    "BUILTIN_INPUTS",
    "INPUT_FIELDS",
    "builtin_input",
    "check_values",
    "parse_duration",
    "parse_until",
    "refuse_expression",
]

#: The task input model of each built-in step kind.
BUILTIN_INPUTS: Final[dict[str, type[BaseModel]]] = {
    "request": RequestInput, "http": HttpInput, "publish": PublishInput}
#: Task input fields whose step field has another name.
INPUT_FIELDS: Final = {"timeout": "request_timeout"}

Loc = tuple[str | int, ...]
#: What a pattern of contracts.builtins means, said plainly.
_PLAIN: Final = {
    ("subject", "string_pattern_mismatch"): "not a NATS subject (tokens separated by dots, "
    "no spaces, no wildcards * or >)",
    ("url", "string_pattern_mismatch"): "not an http:// or https:// URL",
}


def builtin_input(step: Any, fill: Callable[[str, Any], Any]) -> dict[str, Any]:
    """The task input of a ``request``, ``http`` or ``publish`` step.

    Args:
        step: The step (a RequestStep, HttpStep or PublishStep).
        fill: ``fill(field, template)`` -> the value of a template field (rendered).
    """
    if step.kind == "http":
        return {"method": step.method, "url": fill("url", step.url),
                "headers": fill("headers", step.headers), "query": fill("query", step.query),
                "body": fill("body", step.body), "expect": step.expect,
                "timeout": step.request_timeout}
    out = {"subject": fill("subject", step.subject), "payload": fill("payload", step.payload),
           "headers": fill("headers", step.headers)}
    if step.kind == "request":
        out["timeout"] = step.request_timeout
    else:
        out["stream"] = step.stream
    return out


def parse_duration(value: Any) -> float:
    """A sleep's duration in seconds: a number, or CEL duration text (``90s``, ``1h30m``).

    Raises:
        ValueError: it is neither, or negative.
    """
    if isinstance(value, str):
        # CEL's own duration literal, so that it means what `duration()` means.
        with contextlib.suppress(ExpressionError):
            value = evaluate(f"duration({json.dumps(value)})", {})
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"duration {value!r} is not a number of seconds or a duration "
                         "like 90s or 1h30m")
    return float(value)


def parse_until(value: Any) -> datetime:
    """A sleep's ``until``: an RFC 3339 time with a zone.

    Raises:
        ValueError: it is not one.
    """
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 time") from None
    if due.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (add Z or +00:00)")
    return due


def _loc(field: str | None) -> Loc:
    return tuple(int(p) if p.isdigit() else p for p in (field or "").split(".") if p)


def _raise(errors: list[InitErrorDetails]) -> NoReturn:
    raise ValidationError.from_exception_data("WorkflowConfig", errors)


def _error(loc: Loc, message: str, kind: str = "value_error",
           value: Any = None) -> InitErrorDetails:
    # The message goes in as context: braces in it (``${...}``) are not a format.
    return InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}),
                            loc=loc, input=value)


def refuse_expression(exc: ExpressionError, *, steps: list[str]) -> NoReturn:
    """Re-raise an expression found wrong on arrival as a validation error at its field.

    Args:
        exc: The error (its field is ``steps.<n>.…`` or ``output.…``).
        steps: The workflow's step ids, in order (the message names the step).
    """
    loc = _loc(exc.field)
    message = exc.message
    if len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int) and loc[1] < len(steps):
        message = f"step {steps[loc[1]]!r}: {message}"
    _raise([_error(loc, message, "expression", exc.expression)])


class _Unknown:
    """What only the run knows."""

    def __repr__(self) -> str:
        return "<known at run time>"


_UNKNOWN: Final = _Unknown()


class _Checker:
    """Collects what is wrong with one workflow's values."""

    def __init__(self) -> None:
        self.errors: list[InitErrorDetails] = []

    def add(self, loc: Loc, step: str | None, message: str, value: Any = None, *,
            kind: str = "value_error") -> None:
        self.errors.append(_error(loc, f"step {step!r}: {message}" if step else message,
                                  kind, value))

    def known(self, template: Any, loc: Loc, step: str | None) -> Any:
        """The template's value as far as it is known (_UNKNOWN where it is not)."""
        if isinstance(template, str):
            if "${" not in template:
                return template
            if not all(e is None or is_constant(e) for _, e in split_template(template)):
                return _UNKNOWN
            try:
                return render(template, {})
            except ExpressionError as exc:
                self.add(loc, step, exc.message, template, kind="expression")
                return _UNKNOWN
        if isinstance(template, dict):
            return {k: self.known(v, (*loc, k), step) for k, v in template.items()}
        if isinstance(template, list):
            return [self.known(v, (*loc, i), step) for i, v in enumerate(template)]
        return template

    def constant(self, text: str | None, loc: Loc, step: str) -> Any:
        """The value of a bare expression that reads no variable (else _UNKNOWN)."""
        if text is None or not is_constant(text):
            return _UNKNOWN
        try:
            return evaluate(text, {})
        except ExpressionError as exc:
            self.add(loc, step, exc.message, text, kind="expression")
            return _UNKNOWN

    def step(self, s: Any, loc: Loc) -> None:
        when = self.constant(s.when, (*loc, "when"), s.id)
        if when is not _UNKNOWN and not isinstance(when, bool):
            self.add((*loc, "when"), s.id, f"condition {s.when!r} is always "
                     f"{json.dumps(when)}, not a boolean", s.when)
        if s.kind in BUILTIN_INPUTS:
            self.builtin(s, loc)
        elif s.kind == "sleep":
            self.sleep(s, loc)
        elif s.kind == "switch":
            self.constant(s.value, (*loc, "value"), s.id)
        elif s.kind == "map":
            items = self.constant(s.items, (*loc, "items"), s.id)
            if items is not _UNKNOWN and not isinstance(items, list):
                self.add((*loc, "items"), s.id, f"items {s.items!r} is always "
                         f"{json.dumps(items)}, not a list", s.items)
            body = s.step
            self.step(body.model_copy(update={"id": s.id}), (*loc, "step"))
        elif s.kind == "workflow":
            self.definition(s, loc)
        for name, template in s.templates().items():
            if s.kind not in BUILTIN_INPUTS and s.kind != "sleep":
                self.known(template, (*loc, name), s.id)

    def builtin(self, s: Any, loc: Loc) -> None:
        """Validate the task input as far as it is known; placeholders stand for the rest."""
        partial: set[str] = set()

        def fill(name: str, template: Any) -> Any:
            if name in ("subject", "url"):
                shape = self.shape(template, (*loc, name), s.id, url=name == "url")
                if shape is _UNKNOWN:
                    return "http://x" if name == "url" else "x"
                if any(e is not None and not is_constant(e)
                       for _, e in split_template(template)):
                    partial.add(name)
                return shape
            value = self.known(template, (*loc, name), s.id)
            return _placeholders(value, text=name in ("headers", "query"))

        data = builtin_input(s, fill)
        try:
            BUILTIN_INPUTS[s.kind].model_validate(data)
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                where = tuple(e["loc"])
                name = str(where[0]) if where else ""
                message = _PLAIN.get((name, str(e["type"])), str(e["msg"]))
                if name in partial:
                    message += ", whatever its expressions give (the text around them is "\
                               "fixed)"
                field = INPUT_FIELDS.get(name, name)
                self.add((*loc, field, *where[1:]), s.id,
                         f"{field}: {message}" if field else message, e.get("input"))

    def shape(self, template: str, loc: Loc, step: str, *, url: bool) -> Any:
        """A subject or URL template with placeholders for what the run fills in.

        _UNKNOWN when a placeholder could make it look wrong while a real value would not
        (``$${...}`` may become ``$SRV.x``; ``htt${...}`` may become ``https://``).
        """
        if "${" not in template:
            return template
        pieces = split_template(template)
        first = pieces[0][0] if pieces[0][1] is None else ""
        if len(pieces) > 1 and first:
            prefixes = ("http://", "https://") if url else ("$SRV.",)
            if any(p.startswith(first.lower() if url else first) and p != first
                   for p in prefixes):
                return _UNKNOWN
        out = []
        for i, (text, expr) in enumerate(pieces):
            if expr is None:
                out.append(text)
            elif is_constant(expr):
                value = self.constant(expr, loc, step)
                if value is _UNKNOWN:
                    return _UNKNOWN
                out.append(value if isinstance(value, str)
                           else json.dumps(value, separators=(",", ":")))
            else:
                out.append("http://x" if url and i == 0 else "x")
        return "".join(out)

    def sleep(self, s: Any, loc: Loc) -> None:
        if s.duration is not None:
            value = self.known(s.duration, (*loc, "duration"), s.id)
            if value is not _UNKNOWN:
                try:
                    parse_duration(value)
                except ValueError as exc:
                    self.add((*loc, "duration"), s.id, str(exc), s.duration)
        if s.until is not None:
            value = self.known(s.until, (*loc, "until"), s.id)
            if value is not _UNKNOWN:
                try:
                    parse_until(value)
                except ValueError as exc:
                    self.add((*loc, "until"), s.id, str(exc), s.until)

    def definition(self, s: Any, loc: Loc) -> None:
        try:
            _definition_name().validate_python(s.definition)
        except ValidationError as exc:
            self.add((*loc, "definition"), s.id,
                     f"definition: {exc.errors(include_url=False)[0]['msg']}", s.definition)


@functools.cache
def _definition_name() -> TypeAdapter[str]:
    # Imported here: contracts.definitions builds on contracts.models, which calls us.
    from contracts.definitions import DefinitionName

    return TypeAdapter(DefinitionName)


def _placeholders(value: Any, *, text: bool) -> Any:
    """``value`` with what the run fills in replaced by a value that passes."""
    if value is _UNKNOWN:
        return "x" if text else None
    if isinstance(value, dict):
        return {k: _placeholders(v, text=text) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, text=text) for v in value]
    return value


def _steps(config: Any) -> Iterator[tuple[Loc, Any]]:
    for i, s in enumerate(config.steps):
        yield ("steps", i), s


def check_values(config: Any) -> None:
    """Check every value of a workflow that is known before it runs.

    Args:
        config: The WorkflowConfig (its graph and expressions already checked).

    Raises:
        ValidationError: naming each wrong field and its step.
    """
    checker = _Checker()
    for loc, s in _steps(config):
        checker.step(s, loc)
    checker.known(config.output, ("output",), None)
    if checker.errors:
        _raise(checker.errors)
