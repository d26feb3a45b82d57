"""W3C trace context across natsflow's hops, and OpenTelemetry spans when enabled.

The contract is two NATS headers, the W3C Trace Context ones: ``traceparent`` and
``tracestate``. They travel gateway → ``workflow.create`` request (or submit message) →
the workflow's record → every task message → the worker's result and progress reports.

Two modes, chosen per process:

- **off** (the default): no span is made and OpenTelemetry is never imported; an
  incoming ``traceparent``/``tracestate`` is passed on unchanged, so the caller's own
  tracing still joins up.
- **on** (``NATSFLOW_OTEL=1``, or :func:`enable`; needs ``natsflow[otel]``): spans are
  made with OpenTelemetry's global tracer provider and each hop sends the context of
  the span it is in.

Every OpenTelemetry import is in this module, inside functions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.headers import TRACEPARENT, TRACESTATE

__all__ = [
    "ENV_VAR",
    "TRACEPARENT",
    "TRACESTATE",
    "TraceContext",
    "configure",
    "enable",
    "enabled",
    "extract",
    "forward",
    "inject",
    "mark_error",
    "record_span",
    "span",
]

log = logging.getLogger("natsflow.tracing")

#: Environment variable that turns OpenTelemetry on (``1``/``true``/``yes``).
ENV_VAR: Final = "NATSFLOW_OTEL"
_TRACER: Final = "natsflow"
_TRACEPARENT_RE: Final = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_MAX_TRACESTATE: Final = 512  # W3C: a vendor may drop a longer one

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]


class TraceContext(BaseModel):
    """A W3C trace context: where in a trace a message belongs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traceparent: str = Field(pattern=_TRACEPARENT_RE.pattern,
                             description="`00-<trace id>-<parent span id>-<flags>`.")
    tracestate: str | None = Field(default=None, max_length=_MAX_TRACESTATE)

    @field_validator("traceparent")
    @classmethod
    def _valid_ids(cls, value: str) -> str:
        if not _valid_traceparent(value):
            raise ValueError("version ff and all-zero ids are invalid")
        return value

    @property
    def trace_id(self) -> str:
        """The 32 hex digits of the trace id."""
        return self.traceparent.split("-")[1]

    def headers(self) -> dict[str, str]:
        """The context as NATS (or HTTP) headers."""
        out = {TRACEPARENT: self.traceparent}
        if self.tracestate:
            out[TRACESTATE] = self.tracestate
        return out


def extract(headers: Mapping[str, str] | None) -> TraceContext | None:
    """The trace context in ``headers`` (any case), or None if absent or malformed."""
    if not headers:
        return None
    parent = state = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == TRACEPARENT:
            parent = value.strip().lower()
        elif lowered == TRACESTATE:
            state = value.strip()
    if parent is None or not _valid_traceparent(parent):
        return None
    if state is not None and (not state or len(state) > _MAX_TRACESTATE):
        state = None
    return TraceContext(traceparent=parent, tracestate=state)


def _valid_traceparent(value: str) -> bool:
    if not _TRACEPARENT_RE.match(value):
        return False
    version, trace_id, span_id, _ = value.split("-")
    return version != "ff" and trace_id != "0" * 32 and span_id != "0" * 16


def inject(headers: dict[str, str], fallback: TraceContext | None = None) -> dict[str, str]:
    """Add the trace context to send on to ``headers`` (in place; also returned).

    When enabled and a span is current, its context; otherwise ``fallback`` (the context
    that came in) unchanged; otherwise nothing.
    """
    ctx = forward(fallback)
    if ctx is not None:
        headers.update(ctx.headers())
    return headers


# -- the switch -------------------------------------------------------------------------

_enabled: bool | None = None


def enable(on: bool = True) -> None:
    """Turn spans on (or off) for this process, whatever ``NATSFLOW_OTEL`` says.

    Raises:
        RuntimeError: turning on without the ``opentelemetry-api`` package
            (``pip install 'natsflow[otel]'``).
    """
    global _enabled
    if on and not _importable():
        raise RuntimeError("tracing needs OpenTelemetry: pip install 'natsflow[otel]'")
    _enabled = on


def enabled() -> bool:
    """Whether this process makes spans (``NATSFLOW_OTEL`` unless :func:`enable` said)."""
    global _enabled
    if _enabled is None:
        wanted = os.environ.get(ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}
        if wanted and not _importable():
            log.warning("%s is set but OpenTelemetry is not installed "
                        "(pip install 'natsflow[otel]'): tracing stays off", ENV_VAR)
            wanted = False
        _enabled = wanted
    return _enabled


def _importable() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


# -- spans ------------------------------------------------------------------------------


@contextmanager
def span(name: str, parent: TraceContext | None, *,
         attributes: Mapping[str, str | int | float | bool] | None = None,
         kind: SpanKind = "internal") -> Iterator[None]:
    """Run the block inside a span that is a child of ``parent`` (a no-op when off).

    With no ``parent``, the span is a child of the current span, or a new trace. An
    exception escaping the block marks the span as an error and is re-raised.
    """
    if not enabled():
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(name, context=_otel_context(parent),
                                      kind=_kind(kind), attributes=dict(attributes or {})):
        yield


def mark_error(code: str, message: str) -> None:
    """Mark the current span as failed (a no-op when off or outside a span)."""
    if not enabled():
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    current.set_attribute("natsflow.error.code", code)
    current.set_status(Status(StatusCode.ERROR, message[:200]))


def record_span(name: str, parent: TraceContext | None, *, start: datetime, end: datetime,
                attributes: Mapping[str, str | int | float | bool] | None = None,
                error: str | None = None) -> None:
    """Emit a span that already happened (from ``start`` to ``end``); a no-op when off.

    Args:
        name: The span's name.
        parent: The context it belongs to (a new trace if None).
        start: When it began.
        end: When it ended.
        attributes: Its attributes.
        error: Set: the span failed, with this description.
    """
    if not enabled():
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    tracer = trace.get_tracer(_TRACER)
    started = tracer.start_span(name, context=_otel_context(parent),
                                attributes=dict(attributes or {}),
                                start_time=_nanos(start))
    if error is not None:
        started.set_status(Status(StatusCode.ERROR, error[:200]))
    started.end(end_time=max(_nanos(end), _nanos(start)))


def _nanos(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def _kind(kind: SpanKind) -> Any:
    from opentelemetry.trace import SpanKind as OtelKind

    return OtelKind[kind.upper()]


def _otel_context(parent: TraceContext | None) -> Any:
    """An OpenTelemetry context holding ``parent`` (None: the current context)."""
    if parent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier=parent.headers())


def _current() -> TraceContext | None:
    """The context of the current span, if one is recording."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return extract(carrier)


def configure(service_name: str) -> None:
    """Turn tracing on for a service, with a tracer provider if it has none yet.

    A process started under ``opentelemetry-instrument`` (or that set a provider itself)
    keeps its provider. Otherwise the SDK's is installed, with ``service.name`` =
    ``service_name`` (``OTEL_SERVICE_NAME`` wins), exporting as ``OTEL_TRACES_EXPORTER``
    says: ``otlp`` (the default; needs ``opentelemetry-exporter-otlp``), ``console`` or
    ``none``.

    Raises:
        RuntimeError: OpenTelemetry, or the exporter asked for, is not installed.
    """
    enable()
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise RuntimeError("tracing needs the OpenTelemetry SDK: "
                           "pip install 'natsflow[otel]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            raise RuntimeError("OTEL_TRACES_EXPORTER=otlp needs "
                               "pip install opentelemetry-exporter-otlp-proto-http") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name != "none":
        raise RuntimeError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: "
                           "use otlp, console or none")
    trace.set_tracer_provider(provider)


def forward(incoming: TraceContext | None) -> TraceContext | None:
    """The context to send on from here: the current span's, or ``incoming`` (see inject)."""
    return (_current() if enabled() else None) or incoming
