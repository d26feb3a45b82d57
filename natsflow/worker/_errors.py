"""The exception a task handler raises to fail its attempt with a code."""

from __future__ import annotations

from typing import Any

from contracts.errors import ErrorInfo

__all__ = ["TaskError"]


class TaskError(Exception):
    """Fail the running attempt with a stable code.

    Raise it from a handler; the worker reports a ``failed`` result carrying this error.
    Any other exception becomes code ``worker-error`` (retryable).

    Args:
        code: Stable kebab-case code the workflow author can match on, e.g. ``card-declined``.
        message: Human-readable explanation.
        retryable: False stops the orchestrator from retrying the step.
        details: Extra JSON-serializable data carried with the error.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = True,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details = details

    def __repr__(self) -> str:
        return f"TaskError({self.code!r}, {self.message!r}, retryable={self.retryable})"

    def info(self) -> ErrorInfo:
        """This error as the :class:`~contracts.errors.ErrorInfo` a result carries."""
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable,
                         details=self.details)
