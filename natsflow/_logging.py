"""Log output of the services: plain text, or one JSON object per line.

A log call about a workflow passes ``extra={"workflow_id": ..., "step_id": ...}``; the
JSON formatter carries those fields, so a log pipeline can follow one workflow.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "LogFormat", "setup_logging"]

#: Attributes a record may carry through ``extra=`` that JSON lines include.
CONTEXT_FIELDS: Final = ("workflow_id", "step_id", "batch_id", "attempt", "task")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(StrEnum):
    """How the services write their logs."""

    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(fmt: LogFormat | str = LogFormat.TEXT, *, level: int = logging.INFO) -> None:
    """Send every log record (``natsflow.*``, uvicorn, ...) to stderr in ``fmt``.

    Replaces the root logger's handlers; uvicorn's own loggers propagate to it.
    """
    handler = logging.StreamHandler(sys.stderr)
    if LogFormat(fmt) is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
