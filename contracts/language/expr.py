"""Expressions: CEL (Common Expression Language), sandboxed, no ``eval``.

Values in a workflow are computed by CEL through the ``common-expression-language``
package (a Rust implementation: no access to anything but the variables given).

* A *condition* (``when``, a switch's ``value``, a map's ``items``) is a bare CEL
  expression.
* A *template* (a step's ``input``, ``payload``, ``url``, a transform's ``output``, the
  workflow's ``output``) is any JSON value whose strings may hold ``${expr}``: a string
  that is exactly one ``${expr}`` becomes the expression's value (any JSON type); text
  around one or more ``${expr}`` gets each value interpolated (strings as they are,
  other values as compact JSON). ``$${`` is a literal ``${``.

Variables: ``input`` (the workflow's input), ``steps`` (finished steps by id:
``{"output", "state", "error"}``), ``workflow`` (``{"id", "name", "labels"}``), and in a
map's item step ``item`` and ``index``. A step id with a dash is read as
``steps["my-step"]``. See docs/expressions.md.

What can be known before a run is checked when a definition arrives
(:func:`check_expression`): the syntax, the variables, the functions called (only
:data:`FUNCTIONS` exist), and the fields read of ``steps.<id>`` and ``workflow``.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Collection, Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any, Final

from contracts.errors import ExpressionError
from contracts.language._cel import cel

__all__ = [
    "FUNCTIONS",
    "STEP_FIELDS",
    "WORKFLOW_FIELDS",
    "ExpressionError",
    "check_expression",
    "check_template",
    "compile_expression",
    "evaluate",
    "is_constant",
    "referenced_steps",
    "render",
    "split_template",
    "template_expressions",
]

#: The functions of the CEL runtime in use: the ``common-expression-language`` package's
#: Rust standard library (its opt-in Python extensions are not loaded). Anything else
#: fails every run ("Undefined variable or function"), so it is refused on arrival.
#: Macros (``has``, ``all``, ``exists``, ``exists_one``, ``map``, ``filter``) are expanded
#: by the parser and operators are named ``_+_``, ``@in``...: neither is listed here.
#: ``tests/test_submit_checks.py`` holds this list to what the runtime really has.
FUNCTIONS: Final = frozenset({
    "bytes", "contains", "double", "duration", "dyn", "endsWith", "getDate",
    "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear", "getHours",
    "getMilliseconds", "getMinutes", "getMonth", "getSeconds", "int", "matches", "size",
    "startsWith", "string", "timestamp", "type", "uint",
})
#: What ``steps.<id>`` holds (see the engine's expression context).
STEP_FIELDS: Final = ("output", "state", "error")
#: What ``workflow`` holds.
WORKFLOW_FIELDS: Final = ("id", "name", "labels")

_BRACKETED_RE = re.compile(r"(?<![\w.])steps\s*\[\s*(['\"])(([^'\"]+))\1\s*\]")
_DOTTED_RE = re.compile(r"(?<![\w.])steps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_STRING_RE = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_NAME_RE = re.compile(r"^[A-Za-z_]\w*$")
# ``steps.<id>.<field>`` and ``workflow.<field>``; a ``(`` after the field is a method call.
_STEP_FIELD_RE = re.compile(r"(?<![\w.])steps\s*\.\s*([A-Za-z_]\w*)\s*\.\s*([A-Za-z_]\w*)"
                            r"(\s*\()?")
_WORKFLOW_FIELD_RE = re.compile(r"(?<![\w.])workflow\s*\.\s*([A-Za-z_]\w*)(\s*\()?")
_MACRO_VAR_RE = re.compile(r"\.\s*(?:map|filter|all|exists|exists_one)\s*\(\s*([A-Za-z_]\w*)"
                           r"\s*,")


@functools.lru_cache(maxsize=4096)
def compile_expression(text: str) -> Any:
    """The compiled program of ``text`` (cached).

    Raises:
        ExpressionError: it does not parse (the message says where).
    """
    try:
        return cel.compile(text)
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise ExpressionError(f"expression {text!r} does not parse: {detail}",
                              expression=text) from None


@functools.lru_cache(maxsize=4096)
def _variables(text: str) -> frozenset[str]:
    return frozenset(compile_expression(text).references()["variables"])


@functools.lru_cache(maxsize=4096)
def _functions(text: str) -> frozenset[str]:
    # Operators (``_+_``, ``@in``, ``!_``) are not names; only named functions can be unknown.
    return frozenset(f for f in compile_expression(text).references()["functions"]
                     if _NAME_RE.match(f))


def is_constant(text: str) -> bool:
    """True if the expression reads no variable: its value is known before any run.

    Such an expression holds no macro either (a macro binds a variable), so evaluating it
    costs no more than reading it.

    Raises:
        ExpressionError: it does not parse.
    """
    return not _variables(text)


def _plain(value: Any) -> Any:
    """A CEL result as plain JSON data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def evaluate(text: str, context: Mapping[str, Any], *, field: str | None = None) -> Any:
    """Evaluate one expression against ``context``; the result is plain JSON.

    Raises:
        ExpressionError: it does not parse, or fails (no such key, wrong types, ...).
    """
    try:
        prog = compile_expression(text)
    except ExpressionError as exc:
        exc.field = field
        raise
    # Only the variables the expression reads: CEL converts every value it is given,
    # and a map's context holds the whole item list.
    names = _variables(text)
    try:
        return _plain(prog.execute({k: v for k, v in context.items() if k in names}))
    except Exception as exc:
        if isinstance(exc, KeyError):
            what = f"no such key {exc}"
        else:
            what = " ".join(str(exc).split()) or type(exc).__name__
        raise ExpressionError(f"expression {text!r} failed: {what}", expression=text,
                              field=field) from None


def template_expressions(template: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(JSON path, expression) of every ``${...}`` in a template, in order.

    Raises:
        ExpressionError: a ``${`` is never closed.
    """
    if isinstance(template, str):
        for _, expr in _pieces(template, path):
            if expr is not None:
                yield path, expr
    elif isinstance(template, dict):
        for k, v in template.items():
            yield from template_expressions(v, f"{path}.{k}" if path else str(k))
    elif isinstance(template, list):
        for i, v in enumerate(template):
            yield from template_expressions(v, f"{path}.{i}" if path else str(i))


@functools.lru_cache(maxsize=4096)
def split_template(text: str) -> tuple[tuple[str, str | None], ...]:
    """A template string as its pieces: ``(literal, None)`` and ``(source, expression)``.

    Raises:
        ExpressionError: a ``${`` is never closed.
    """
    return tuple(_pieces(text, None))


def _pieces(text: str, where: str | None) -> list[tuple[str, str | None]]:
    """A template string as (literal, None) and (source, expression) pieces."""
    out: list[tuple[str, str | None]] = []
    i = 0
    literal: list[str] = []
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
            continue
        if text.startswith("${", i):
            end = _closing(text, i + 2)
            if end < 0:
                raise ExpressionError(f"unterminated '${{' in {text!r}", expression=text,
                                      field=where or None)
            if literal:
                out.append(("".join(literal), None))
                literal = []
            out.append((text[i:end + 1], text[i + 2:end].strip()))
            i = end + 1
            continue
        literal.append(text[i])
        i += 1
    if literal:
        out.append(("".join(literal), None))
    return out


def _closing(text: str, start: int) -> int:
    """Index of the ``}`` closing a ``${`` (braces and strings inside are skipped)."""
    depth = 0
    quote = ""
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def render(template: Any, context: Mapping[str, Any], *, field: str | None = None) -> Any:
    """Fill a template's ``${...}`` from ``context``.

    Raises:
        ExpressionError: an expression fails; ``field`` names where (``<field>.<path>``).
    """
    if isinstance(template, str):
        if "${" not in template:
            return template
        pieces = _pieces(template, field)
        if len(pieces) == 1 and pieces[0][1] is not None:
            return evaluate(pieces[0][1], context, field=field)
        parts = []
        for literal, expr in pieces:
            if expr is None:
                parts.append(literal)
                continue
            value = evaluate(expr, context, field=field)
            parts.append(value if isinstance(value, str)
                         else json.dumps(value, separators=(",", ":")))
        return "".join(parts)
    if isinstance(template, dict):
        return {k: render(v, context, field=f"{field}.{k}" if field else k)
                for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context, field=f"{field}.{i}" if field else str(i))
                for i, v in enumerate(template)]
    return template


def referenced_steps(text: str) -> frozenset[str]:
    """Ids of the steps an expression reads (``steps.x``, ``steps["x-y"]``).

    Text inside other string literals (``"steps.x"``) is not a reference.
    """
    found = {m.group(3) for m in _BRACKETED_RE.finditer(text)}
    bare = _STRING_RE.sub('""', _BRACKETED_RE.sub("_", text))
    found |= {m.group(1) for m in _DOTTED_RE.finditer(bare)}
    return frozenset(found)


def check_expression(text: str, *, variables: Collection[str],
                     field: str | None = None) -> frozenset[str]:
    """Check an expression when a definition arrives; returns the steps it reads.

    Raises:
        ExpressionError: it does not parse, uses a variable or calls a function that does
            not exist, or reads a field ``steps.<id>`` or ``workflow`` does not have.
    """
    try:
        names = _variables(text)
        calls = _functions(text)
    except ExpressionError as exc:
        exc.field = field
        raise
    bound = set(_MACRO_VAR_RE.findall(text))
    unknown = names - set(variables) - bound
    if unknown:
        raise ExpressionError(
            f"expression {text!r} uses unknown variable(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(variables))}", expression=text, field=field)
    missing = calls - FUNCTIONS
    if missing:
        raise ExpressionError(
            f"expression {text!r} calls unknown function(s) {', '.join(sorted(missing))}; "
            f"natsflow's CEL has {', '.join(sorted(FUNCTIONS))} (docs/expressions.md)",
            expression=text, field=field)
    _check_fields_read(text, bound=bound, field=field)
    return referenced_steps(text)


def _check_fields_read(text: str, *, bound: set[str], field: str | None) -> None:
    """``steps.<id>.<f>`` and ``workflow.<f>`` must name fields those values have."""
    # Bracketed ids become plain names, then string literals are emptied: text inside a
    # string is no field access.
    bare = _STRING_RE.sub('""', _BRACKETED_RE.sub("steps._", text))
    if "steps" not in bound:
        for m in _STEP_FIELD_RE.finditer(bare):
            if m.group(3) is None and m.group(2) not in STEP_FIELDS:
                raise ExpressionError(
                    f"expression {text!r} reads `{m.group(2)}` of a step; a step has "
                    f"{', '.join(STEP_FIELDS)}", expression=text, field=field)
    if "workflow" not in bound:
        for m in _WORKFLOW_FIELD_RE.finditer(bare):
            if m.group(2) is None and m.group(1) not in WORKFLOW_FIELDS:
                raise ExpressionError(
                    f"expression {text!r} reads workflow.{m.group(1)}; workflow has "
                    f"{', '.join(WORKFLOW_FIELDS)}", expression=text, field=field)


def check_template(template: Any, *, variables: Collection[str],
                   field: str | None = None) -> frozenset[str]:
    """:func:`check_expression` for every expression of a template (steps read, united)."""
    acc: set[str] = set()
    for path, text in template_expressions(template):
        where = ".".join(p for p in (field, path) if p) or None
        acc |= check_expression(text, variables=variables, field=where)
    return frozenset(acc)
