"""A registered task handler: its input model, and how its output becomes JSON."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from contracts.errors import ErrorInfo, FieldError

if TYPE_CHECKING:
    from ._context import TaskContext

__all__ = ["HandlerFn", "TaskHandler", "invalid_input_info", "to_json_value"]

#: What ``@worker.task`` decorates: ``async def handler(ctx, input) -> output``.
HandlerFn = Callable[["TaskContext", Any], Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class TaskHandler:
    """One task type and the coroutine function that runs it.

    Attributes:
        task_type: The task type, e.g. ``demo.echo``.
        fn: The handler.
        input_model: The pydantic model the task input is validated into, if any.
    """

    task_type: str
    fn: HandlerFn
    input_model: type[BaseModel] | None

    @classmethod
    def of(cls, task_type: str, fn: HandlerFn) -> TaskHandler:
        """Inspect ``fn`` and build its handler.

        Raises:
            TypeError: ``fn`` is not an ``async def`` taking ``(ctx, input)``.
        """
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler for {task_type!r} must be an async function")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise TypeError(f"handler for {task_type!r} must take (ctx, input)")
        return cls(task_type, fn, _input_model(fn, params[1]))

    def parse_input(self, data: dict[str, Any]) -> Any:
        """The value passed to the handler as its input.

        Raises:
            pydantic.ValidationError: the input does not fit the handler's model.
        """
        if self.input_model is None:
            return data
        return self.input_model.model_validate(data)


def _input_model(fn: HandlerFn, param: inspect.Parameter) -> type[BaseModel] | None:
    hint: Any = param.annotation
    if isinstance(hint, str):  # postponed annotation (``from __future__ import annotations``)
        closure = dict(zip(fn.__code__.co_freevars,
                           (c.cell_contents for c in fn.__closure__ or ()), strict=False))
        try:
            hint = eval(hint, fn.__globals__, closure)  # what typing.get_type_hints does
        except Exception as exc:
            raise TypeError(f"cannot resolve the input annotation {hint!r} of "
                            f"{fn.__qualname__}: define it at module level") from exc
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


def to_json_value(value: Any) -> Any:
    """A handler's return (or progress) value as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def invalid_input_info(exc: ValidationError) -> ErrorInfo:
    """The ``invalid-input`` error for a task input that does not fit the handler's model."""
    errors = [FieldError(loc=".".join(str(p) for p in e["loc"]) or "input", message=e["msg"],
                         type=e["type"]) for e in exc.errors()]
    first = errors[0] if errors else None
    message = (f"invalid input: {first.loc}: {first.message}" if first is not None
               else "invalid input")
    return ErrorInfo(code="invalid-input", message=message, retryable=False,
                     field=first.loc if first is not None else None, errors=errors)
