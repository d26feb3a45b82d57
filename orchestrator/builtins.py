"""The built-in steps: ``natsflow.request``, ``natsflow.http`` and ``natsflow.publish``.

The orchestrator process serves them with natsflow's own worker SDK, so they get the
retries, timeouts, redelivery and cancellation of any worker. Their inputs are the models
of :mod:`contracts.builtins`; an input that does not fit fails with ``invalid-input``
(not retryable), naming the field. Other failures are :class:`TaskError` codes::

    request-error       the service answered with a NATS micro error reply
                        (retryable when its code is numeric and >= 500)
    no-responders       nothing listens on the subject (retryable)
    request-timeout     no reply within the timeout (retryable)
    http-status         an unexpected HTTP status (retryable for 408, 429 and 5xx)
    http-error          no connection, or a broken exchange (retryable)
    http-timeout        no complete response within the timeout (retryable)
    egress-refused      the URL, a redirect or an address it resolves to is refused by the
                        egress policy (not retryable; see contracts.egress)
    no-stream           JetStream publish: no stream captures the subject (retryable)
    publish-timeout     JetStream publish: no ack in time (retryable)
    publish-error       the server refused the publish (retryable)
    output-too-large    reply or body over MAX_STEP_OUTPUT_BYTES (not retryable)
    forbidden-subject   the subject is the server's or natsflow's own (not retryable)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from contracts.builtins import (
    HTTP_TASK,
    PUBLISH_TASK,
    REQUEST_TASK,
    HttpInput,
    PublishInput,
    RequestInput,
)
from contracts.egress import EgressPolicy
from contracts.errors import EgressRefused
from contracts.headers import ERROR_CODE_HEADER, ERROR_HEADER, MSG_ID
from contracts.models import MAX_STEP_OUTPUT_BYTES
from contracts.subjects import Subjects
from natsflow.worker import TaskContext, TaskError, Worker
from transport.connect import NatsSettings

from .egress import guarded_client

__all__ = ["BuiltinSteps", "decode_reply", "encode_payload", "safe_url"]

#: Seconds a publish waits for the server (flush or JetStream ack).
PUBLISH_TIMEOUT: Final = 5.0
#: Characters of a failed response kept in the error.
EXCERPT: Final = 200
#: Most built-in steps running at once in one orchestrator (they mostly wait on I/O).
CONCURRENCY: Final = 256
_RETRYABLE_STATUSES: Final = frozenset({408, 429})


def encode_payload(payload: Any) -> bytes:
    """A message body: compact JSON, a string as its UTF-8 text, ``None`` as empty."""
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_reply(data: bytes) -> Any:
    """A reply as step output: JSON when it parses, else UTF-8 text; empty is ``None``."""
    if not data:
        return None
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def _too_large(what: str) -> TaskError:
    return TaskError("output-too-large", f"{what} is larger than {MAX_STEP_OUTPUT_BYTES} bytes",
                     retryable=False)


def _service_code_retryable(code: str) -> bool:
    try:
        return int(code) >= 500
    except ValueError:
        return False


class BuiltinSteps:
    """Serves the built-in step types on one NATS connection.

    Args:
        nc: The connection to serve on and to make the steps' NATS calls with (left open).
        subjects: The deployment's names (its internal subjects are off limits to steps).
        concurrency: Most built-in steps running at once.
        stop_grace: Seconds a stop lets running steps finish before cancelling them.
        http: The HTTP client to use (left open); by default one is made per run, which
            connects only where ``egress`` allows.
        egress: What the operator opened beyond the defaults (None: nothing).
    """

    def __init__(self, nc: Client, subjects: Subjects, *, concurrency: int = CONCURRENCY,
                 stop_grace: float = 10.0, http: httpx.AsyncClient | None = None,
                 egress: EgressPolicy | None = None) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._egress = egress or EgressPolicy()
        self._http = http
        self._given_http = http
        self.worker = Worker(concurrency, name="natsflow-builtins", stop_grace=stop_grace,
                             reserved=True)  # the one worker for natsflow.* task types
        self.worker.task(REQUEST_TASK)(self.request)
        self.worker.task(HTTP_TASK)(self.http)
        self.worker.task(PUBLISH_TASK)(self.publish)

    @contextlib.asynccontextmanager
    async def running(self, settings: NatsSettings, *, replicas: int = 1
                      ) -> AsyncIterator[BuiltinSteps]:
        """Serve while the block runs; on exit stop gracefully and close the HTTP client.

        Args:
            settings: The deployment (its prefix names the work queues).
            replicas: Replicas of the tasks stream, if this creates it.
        """
        # Each redirect hop connects through the policy again.
        client = self._given_http or guarded_client(self._egress, follow_redirects=True)
        self._http = client
        try:
            async with self.worker.running(settings, nc=self._nc, replicas=replicas):
                yield self
        finally:
            if self._given_http is None:
                await client.aclose()
            self._http = self._given_http

    def _check_subject(self, subject: str) -> None:
        refusal = self._egress.subject_refusal(subject, self._subjects)
        if refusal is not None:
            raise TaskError("forbidden-subject", refusal, retryable=False, details={
                "subject": subject, "rule": self._egress.subject_rule(subject,
                                                                      self._subjects)})

    # -- natsflow.request --------------------------------------------------------------
    async def request(self, ctx: TaskContext, data: RequestInput) -> Any:
        """Send a NATS request; the reply is the output."""
        self._check_subject(data.subject)
        try:
            reply = await self._nc.request(data.subject, encode_payload(data.payload),
                                           timeout=data.timeout,
                                           headers=_traced(ctx, data.headers) or None)
        except nats.errors.NoRespondersError:
            raise TaskError("no-responders", f"nothing listens on {data.subject}",
                            retryable=True) from None
        except nats.errors.TimeoutError:
            raise TaskError("request-timeout", f"no reply from {data.subject} within "
                            f"{data.timeout:g}s", retryable=True) from None
        headers = reply.headers or {}
        code = headers.get(ERROR_CODE_HEADER)
        if code is not None:
            text = headers.get(ERROR_HEADER, "")
            raise TaskError("request-error", f"{data.subject} answered error {code}: {text}",
                            retryable=_service_code_retryable(code),
                            details={"service_code": code, "service_error": text})
        if len(reply.data) > MAX_STEP_OUTPUT_BYTES:
            raise _too_large(f"the reply from {data.subject}")
        return decode_reply(reply.data)

    # -- natsflow.http -----------------------------------------------------------------
    async def http(self, ctx: TaskContext, data: HttpInput) -> Any:
        """Make an HTTP call; the response body is the output."""
        assert self._http is not None, "serve inside running()"
        body: dict[str, Any] = {}
        headers = _traced(ctx, data.headers)
        if isinstance(data.body, str):
            body["content"] = data.body.encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "text/plain; charset=utf-8"
        elif data.body is not None:
            body["json"] = data.body
        where = safe_url(data.method, data.url)
        try:
            # httpx's ``params`` would replace the URL's own query; the contract adds to it.
            url = httpx.URL(data.url).copy_merge_params(data.query)
            # httpx bounds each network operation; this bounds the whole call.
            async with asyncio.timeout(data.timeout):
                async with self._http.stream(data.method, url, headers=headers,
                                             timeout=data.timeout, **body) as response:
                    content, complete = await _read_bounded(response)
        except (TimeoutError, httpx.TimeoutException):
            raise TaskError("http-timeout", f"{where}: no response within {data.timeout:g}s",
                            retryable=True) from None
        except EgressRefused as exc:
            raise TaskError(exc.code, f"{where}: {exc.message}", retryable=False,
                            details=exc.details) from None
        except httpx.InvalidURL as exc:
            raise TaskError("invalid-input", f"invalid input: url: {exc}",
                            retryable=False) from None
        except httpx.HTTPError as exc:
            raise TaskError("http-error", f"{where}: {type(exc).__name__}: {exc}",
                            retryable=True) from None
        status = response.status_code
        if not (status in data.expect if data.expect else 200 <= status < 300):
            excerpt = content[:EXCERPT * 4].decode("utf-8", errors="replace")[:EXCERPT]
            raise TaskError("http-status", f"{where} answered {status}: {excerpt}",
                            retryable=status in _RETRYABLE_STATUSES or status >= 500,
                            details={"status": status, "body": excerpt})
        if not complete:
            raise _too_large(f"the response body of {where}")
        if data.method == "HEAD" or not content:
            return None
        return _body_output(response, content)

    # -- natsflow.publish --------------------------------------------------------------
    async def publish(self, ctx: TaskContext, data: PublishInput) -> dict[str, Any]:
        """Publish one message; with ``stream``, wait for JetStream's ack."""
        self._check_subject(data.subject)
        payload = encode_payload(data.payload)
        if not data.stream:
            try:
                await self._nc.publish(data.subject, payload,
                                       headers=_traced(ctx, data.headers) or None)
                # Done once the server has it, not merely once it sits in our buffer.
                await self._nc.flush(timeout=int(PUBLISH_TIMEOUT))
            except nats.errors.Error as exc:
                raise TaskError("publish-error", f"publishing to {data.subject} failed: "
                                f"{type(exc).__name__}: {exc}", retryable=True) from None
            return {"subject": data.subject}
        # A redelivered attempt publishes again; JetStream drops the duplicate.
        headers = {MSG_ID: ctx.idempotency_key, **_traced(ctx, data.headers)}
        try:
            ack = await self._js.publish(data.subject, payload, headers=headers,
                                         timeout=PUBLISH_TIMEOUT)
        except nats.js.errors.NoStreamResponseError:
            raise TaskError("no-stream", f"no stream captures {data.subject}",
                            retryable=True) from None
        except nats.errors.TimeoutError:
            raise TaskError("publish-timeout", f"no ack for {data.subject} within "
                            f"{PUBLISH_TIMEOUT:g}s", retryable=True) from None
        except nats.errors.Error as exc:
            raise TaskError("publish-error", f"publishing to {data.subject} failed: "
                            f"{type(exc).__name__}: {exc}", retryable=True) from None
        return {"subject": data.subject, "stream": ack.stream, "seq": ack.seq}


async def _read_bounded(response: httpx.Response) -> tuple[bytes, bool]:
    """At most MAX_STEP_OUTPUT_BYTES of the body, and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_STEP_OUTPUT_BYTES:
            return b"".join(chunks)[:MAX_STEP_OUTPUT_BYTES], False
    return b"".join(chunks), True


def _traced(ctx: TaskContext, headers: dict[str, str]) -> dict[str, str]:
    """The step's headers plus the trace context (headers the step sets itself win)."""
    return {**ctx.trace_headers(), **headers}


def safe_url(method: str, url: str) -> str:
    """``METHOD scheme://host/path`` without credentials or query (they may be secrets)."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return method
    port = f":{u.port}" if u.port is not None else ""
    return f"{method} {u.scheme}://{u.host}{port}{u.path}"


def _body_output(response: httpx.Response, content: bytes) -> Any:
    mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = content.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        text = content.decode("utf-8", errors="replace")
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            pass
    return text
