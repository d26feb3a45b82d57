"""CEL expressions (provisional minimal version; replaced by the full module)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import cel

from .errors import InvalidRequest

__all__ = ["ExpressionError", "check_expression", "check_template", "evaluate", "render",
           "referenced_steps", "template_expressions"]


class ExpressionError(InvalidRequest):
    """An expression does not parse or fails to evaluate."""

    code = "expression-error"

    def __init__(self, message: str, *, expression: str = "", field: str | None = None,
                 step: str | None = None) -> None:
        super().__init__(message, field=field, step=step)
        self.expression = expression


_TEMPLATE_RE = re.compile(r"\$\{([^}]*)\}")
_STEP_RE = re.compile(r"(?<![\w.])steps\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(['\"])([^'\"]+)\2\s*\])")


@functools.lru_cache(maxsize=4096)
def compile_expression(text: str) -> Any:
    try:
        return cel.compile(text)
    except Exception as exc:
        raise ExpressionError(f"{text!r} does not parse: {exc}", expression=text) from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


@functools.lru_cache(maxsize=4096)
def _variables(text: str) -> frozenset[str]:
    return frozenset(compile_expression(text).references()["variables"])


def evaluate(text: str, context: Mapping[str, Any], *, field: str | None = None) -> Any:
    prog = compile_expression(text)
    # Only the variables the expression reads: CEL converts every value it is given,
    # and a map's context holds the whole item list.
    names = _variables(text)
    try:
        return _plain(prog.execute({k: v for k, v in context.items() if k in names}))
    except Exception as exc:
        what = f"no such key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ExpressionError(f"{text!r} failed: {what}", expression=text, field=field) from None


def template_expressions(template: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(template, str):
        for m in _TEMPLATE_RE.finditer(template):
            yield path, m.group(1)
    elif isinstance(template, dict):
        for k, v in template.items():
            yield from template_expressions(v, f"{path}.{k}" if path else str(k))
    elif isinstance(template, list):
        for i, v in enumerate(template):
            yield from template_expressions(v, f"{path}.{i}" if path else str(i))


def render(template: Any, context: Mapping[str, Any], *, field: str | None = None) -> Any:
    if isinstance(template, str):
        if "${" not in template:
            return template
        m = _TEMPLATE_RE.fullmatch(template)
        if m:
            return evaluate(m.group(1), context, field=field)

        def sub(m: re.Match[str]) -> str:
            v = evaluate(m.group(1), context, field=field)
            return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

        return _TEMPLATE_RE.sub(sub, template)
    if isinstance(template, dict):
        return {k: render(v, context, field=f"{field}.{k}" if field else k)
                for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context, field=f"{field}.{i}" if field else str(i))
                for i, v in enumerate(template)]
    return template


def referenced_steps(text: str) -> frozenset[str]:
    return frozenset(m.group(1) or m.group(3) for m in _STEP_RE.finditer(text))


def check_expression(text: str, *, variables: Collection[str],
                     field: str | None = None) -> frozenset[str]:
    try:
        prog = compile_expression(text)
    except ExpressionError as exc:
        exc.field = field
        raise
    del prog
    return referenced_steps(text)


def check_template(template: Any, *, variables: Collection[str],
                   field: str | None = None) -> frozenset[str]:
    acc: set[str] = set()
    for path, text in template_expressions(template):
        where = ".".join(p for p in (field, path) if p) or None
        acc |= check_expression(text, variables=variables, field=where)
    return frozenset(acc)
