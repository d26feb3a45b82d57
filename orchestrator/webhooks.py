"""The webhook deliverer: POSTs queued events to their webhooks, with retries.

The engine queues one :class:`~contracts.webhooks.WebhookDelivery` per (event, webhook)
on ``<prefix>.webhooks.<workflow id>`` (a work-queue stream); this takes them from a
durable pull consumer shared by every orchestrator. What becomes of an attempt is
decided by the pure :func:`settlement`::

    2xx                                 ack
    408, 429, 5xx, timeout, no connection
                                        retry: nak with an exponential delay (or the
                                        receiver's Retry-After, if longer), until
                                        ``max_deliveries``; then dead letter
                                        ``webhook-undeliverable``
    anything else (3xx, other 4xx)      dead letter ``webhook-rejected`` at once
    a host the egress policy refuses    dead letter ``egress-refused`` at once
    nothing to sign with                dead letter ``webhook-unsigned`` at once (no
                                        secret given, none to derive one from, and
                                        ``unsigned`` not asked for)

The events of one workflow are POSTed one after another, in the order they were queued
(deliveries of different workflows run side by side); a retry does not hold back the
events that follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol

import httpx
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.egress import EgressPolicy
from contracts.errors import EgressRefused, ErrorInfo
from contracts.models import SHOWN
from contracts.subjects import Subjects
from contracts.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDelivery,
    derive_secret,
    event_id,
    sign,
)
from transport.consume import ConsumerStalled, PullConsumer, delivery_count
from transport.streams import WEBHOOK_ACK_WAIT

from .builtins import safe_url
from .egress import guarded_client
from .metrics import OrchestratorMetrics

__all__ = ["Action", "Attempt", "DeadLetterFn", "Settlement", "WebhookDeliverer",
           "WebhookSettings", "retry_delay", "settlement"]

log = logging.getLogger("natsflow.webhooks")

#: Characters of a failed response's body kept in the dead letter.
EXCERPT: Final = 200
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
_USER_AGENT: Final = "natsflow-webhooks"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """How webhooks are delivered.

    Args:
        secret: The deployment's webhook secret: a webhook submitted without a secret of
            its own is signed with ``derive_secret(secret, url)``. None: such webhooks
            are dead-lettered (``webhook-unsigned``) unless they asked to be unsigned.
        max_deliveries: Attempts at one delivery before it is dead-lettered.
        backoff: Seconds before the first retry; each further retry waits twice as long.
        max_backoff: Longest wait between two attempts.
        timeout: Seconds one POST may take, connection included.
        concurrency: Most deliveries taken from the queue and not yet settled.
    """

    secret: str | None = None
    max_deliveries: int = 8
    backoff: float = 1.0
    max_backoff: float = 300.0
    timeout: float = 10.0
    concurrency: int = 64

    def __post_init__(self) -> None:
        if self.max_deliveries < 1 or self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("webhook settings: max_deliveries >= 1 and "
                             "0 < backoff <= max_backoff")
        if not 0 < self.timeout <= 60 or self.concurrency < 1:
            raise ValueError("webhook settings: 0 < timeout <= 60 and concurrency >= 1")


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to: a status, or why there was none."""

    status: int | None = None
    error: str | None = None
    retryable: bool = True  # of an error (a URL httpx cannot use will never work)
    excerpt: str = ""
    retry_after: float | None = None
    code: str | None = None  # of an error that is its own dead-letter reason
    details: dict[str, Any] | None = None


class Action(Enum):
    """What becomes of a delivery message."""

    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Settlement:
    """The decision about one delivery message."""

    action: Action
    delay: float = 0.0
    reason: ErrorInfo | None = None


class DeadLetterFn(Protocol):
    """Keeps a message in the dead-letter stream and terminates it (the runtime's)."""

    async def __call__(self, msg: Msg, reason: ErrorInfo, *,
                       log_context: dict[str, str] | None = None,
                       data: str | None = None) -> None: ...


def retry_delay(deliveries: int, settings: WebhookSettings, *,
                retry_after: float | None = None) -> float:
    """Seconds before the next attempt, after ``deliveries`` attempts so far (>= 1)."""
    delay = settings.backoff * 2.0 ** max(0, deliveries - 1)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.max_backoff)


def settlement(attempt: Attempt, *, deliveries: int, settings: WebhookSettings,
               where: str) -> Settlement:
    """Ack, retry later, or dead-letter: what an attempt's outcome calls for.

    Args:
        attempt: What the POST came to.
        deliveries: Attempts made so far, this one included.
        settings: Retry bounds and backoff.
        where: ``POST <url without query>``, for the reason's message.
    """
    status = attempt.status
    if status is not None and 200 <= status < 300:
        return Settlement(Action.ACK)
    details: dict[str, Any] = {"deliveries": deliveries}
    if status is not None:
        details.update(status=status, body=attempt.excerpt)
        what = f"{where} answered {status}: {attempt.excerpt}".rstrip(": ")
        retryable = status in _RETRYABLE_STATUSES or status >= 500
    else:
        details["error"] = attempt.error
        what = f"{where}: {attempt.error}"
        retryable = attempt.retryable
        if attempt.code is not None:
            return Settlement(Action.DEAD, reason=ErrorInfo(
                code=attempt.code, message=what,
                details={**details, **(attempt.details or {})}))
    if not retryable:
        return Settlement(Action.DEAD, reason=ErrorInfo(
            code="webhook-rejected", message=what, details=details))
    if deliveries >= settings.max_deliveries:
        return Settlement(Action.DEAD, reason=ErrorInfo(
            code="webhook-undeliverable",
            message=f"gave up after {deliveries} deliveries: {what}", details=details))
    return Settlement(Action.RETRY, delay=retry_delay(deliveries, settings,
                                                      retry_after=attempt.retry_after))


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


async def _excerpt(response: httpx.Response) -> str:
    """The start of a response's body (never more is read)."""
    if 200 <= response.status_code < 300:
        return ""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= EXCERPT * 4:
            break
    return data[:EXCERPT * 4].decode("utf-8", errors="replace")[:EXCERPT]


class WebhookDeliverer:
    """Takes webhook deliveries from the shared consumer and POSTs them.

    Args:
        nc: Connected NATS client (left open).
        subjects: The deployment's names.
        dead_letter: Where given-up deliveries go (``Processor.dead_letter``).
        settings: Secret, retries, timeouts.
        metrics: Counts deliveries by outcome.
        http: The HTTP client to use (left open); by default one is made on start, which
            connects only where ``egress`` allows.
        clock: Unix seconds, for ``Natsflow-Timestamp``.
        egress: What the operator opened beyond the defaults (None: nothing).
    """

    def __init__(self, nc: Client, subjects: Subjects, *, dead_letter: DeadLetterFn,
                 settings: WebhookSettings | None = None,
                 metrics: OrchestratorMetrics | None = None,
                 http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time,
                 egress: EgressPolicy | None = None) -> None:
        self.nc = nc
        self.subjects = subjects
        self.settings = settings or WebhookSettings()
        self.metrics = metrics or OrchestratorMetrics()
        self._dead_letter = dead_letter
        self._given_http = http
        self._http = http
        self._clock = clock
        self._sub: PullConsumer | None = None
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        # The last delivery taken for each workflow subject: the next one waits for it.
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._egress = egress or EgressPolicy()
        self._beat = WEBHOOK_ACK_WAIT / 3

    async def start(self) -> None:
        """Start taking deliveries (the stream and consumer must be declared)."""
        if self._http is None:
            # Redirects are not followed (a 3xx is a rejection): one checked hop per POST.
            self._http = guarded_client(self._egress, follow_redirects=False,
                                        headers={"User-Agent": _USER_AGENT})
        if not self.settings.secret:
            log.warning("no webhook secret (--webhook-secret, NATSFLOW_WEBHOOK_SECRET): "
                        "only webhooks submitted with a secret or `unsigned: true` can be "
                        "delivered")
        self._sub = await PullConsumer(self.nc, self.subjects.webhooks_stream,
                                       self.subjects.webhook_consumer,
                                       batch=self.settings.concurrency).start()
        self._loop = asyncio.create_task(self._take())

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop taking; let POSTs under way finish for ``grace`` seconds, then cancel.

        What is cancelled is not settled: JetStream redelivers it after the ack wait.
        """
        self._stopping.set()
        if self._loop is not None:
            # Safe at any await: a message is scheduled the moment it is taken, and
            # what was received but not taken is handed back by the consumer's stop.
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._sub is not None:
            await self._sub.stop()
        if self._given_http is None and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- taking ---------------------------------------------------------------------
    async def _take(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            room = self.settings.concurrency - len(self._in_flight)
            if room <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await self._sub.next_batch(room, timeout=1.0)
            except ConsumerStalled:
                log.warning("the server stopped answering webhook pull requests")
                await asyncio.sleep(0.5)
                continue
            except Exception:
                log.exception("taking webhook deliveries failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._schedule(msg)

    def _schedule(self, msg: Msg) -> None:
        key = msg.subject
        task = asyncio.create_task(self._process(msg, self._chains.get(key)))
        self._chains[key] = task
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            if self._chains.get(key) is t:
                del self._chains[key]

        task.add_done_callback(done)

    async def _beating(self, msg: Msg, fut: asyncio.Future[Any]) -> None:
        """Wait for ``fut``, telling JetStream now and then that ``msg`` is in hand."""
        while not fut.done():
            await asyncio.wait({fut}, timeout=self._beat)
            if not fut.done():
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

    async def _process(self, msg: Msg, before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None:
                await self._beating(msg, before)  # keep each workflow's events in order
            try:
                delivery = WebhookDelivery.model_validate_json(msg.data)
            except ValidationError as exc:
                await self._settle(msg, Settlement(Action.DEAD, reason=ErrorInfo(
                    code="invalid-webhook", message=str(exc).splitlines()[0])), None)
                return
            post = asyncio.create_task(self.post(delivery))
            try:
                await self._beating(msg, post)
            finally:
                post.cancel()
            where = safe_url("POST", delivery.url)
            await self._settle(msg, settlement(post.result(), deliveries=delivery_count(msg),
                                               settings=self.settings, where=where),
                               delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Unsettled: JetStream redelivers it after the ack wait.
            log.exception("delivering a webhook from %s failed", msg.subject)

    # -- posting --------------------------------------------------------------------
    def signing_key(self, delivery: WebhookDelivery) -> str | None:
        """The key a delivery is signed with: its own, else derived from the deployment's
        secret and its URL; None only for a webhook submitted ``unsigned``.

        Raises:
            LookupError: it has no secret of its own and there is none to derive one from.
        """
        if delivery.unsigned:
            return None
        if delivery.secret:
            return delivery.secret
        if self.settings.secret:
            return derive_secret(self.settings.secret, delivery.url)
        raise LookupError("no secret to sign with")

    async def post(self, delivery: WebhookDelivery) -> Attempt:
        """POST one event to its webhook, signed with its own key (see signing_key)."""
        assert self._http is not None, "start() first"
        body = delivery.event.model_dump_json().encode()  # what the events stream carries
        timestamp = str(int(self._clock()))
        headers = {"Content-Type": "application/json",
                   EVENT_ID_HEADER: event_id(delivery.event), TIMESTAMP_HEADER: timestamp}
        try:
            key = self.signing_key(delivery)
        except LookupError:
            return Attempt(error="no secret to sign with: give the webhook a `secret`, start "
                           "the orchestrator with --webhook-secret, or submit it with "
                           "`unsigned: true`", retryable=False, code="webhook-unsigned")
        if key is not None:
            headers[SIGNATURE_HEADER] = sign(key, timestamp, body)
        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):  # httpx bounds each operation, this all
                async with self._http.stream("POST", delivery.url, content=body,
                                             headers=headers, timeout=timeout) as response:
                    excerpt = await _excerpt(response)
        except (TimeoutError, httpx.TimeoutException):
            return Attempt(error=f"no response within {timeout:g}s")
        except EgressRefused as exc:
            return Attempt(error=exc.message, retryable=False, code=exc.code,
                           details=exc.details)
        except httpx.InvalidURL as exc:
            return Attempt(error=f"invalid URL: {exc}", retryable=False)
        except httpx.HTTPError as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}")
        return Attempt(status=response.status_code, excerpt=excerpt,
                       retry_after=_retry_after(response.headers.get("retry-after")))

    # -- settling -------------------------------------------------------------------
    async def _settle(self, msg: Msg, decision: Settlement,
                      delivery: WebhookDelivery | None) -> None:
        """The one place where delivery messages are acked, retried or dead-lettered."""
        outcome = {Action.ACK: "delivered", Action.RETRY: "retried",
                   Action.DEAD: "dead-lettered"}[decision.action]
        self.metrics.webhook_deliveries.labels(outcome=outcome).inc()
        try:
            if decision.action is Action.ACK:
                await msg.ack()
            elif decision.action is Action.RETRY:
                await msg.nak(delay=decision.delay)
        except nats.errors.Error as exc:
            # Not settled: JetStream redelivers it after the ack wait.
            log.warning("could not %s a webhook delivery: %s", decision.action.value, exc)
        if decision.action is Action.DEAD:
            assert decision.reason is not None
            context = ({"workflow_id": delivery.event.workflow_id}
                       if delivery is not None else None)
            # The letter keeps the delivery, but not a secret it carries.
            shown = (delivery.model_dump_json(context={SHOWN: True})
                     if delivery is not None and delivery.secret else None)
            await self._dead_letter(msg, decision.reason, log_context=context, data=shown)
