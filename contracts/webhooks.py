"""Webhooks: which events go to which URL, the delivery message, and signatures.

A workflow names up to :data:`~contracts.models.MAX_WEBHOOKS` webhooks in its config.
For each status event a webhook wants (:func:`wants`), the orchestrator's outbox queues a
:class:`WebhookDelivery`; a deliverer POSTs the event's JSON -- byte for byte what the
events stream carries -- with these headers::

    Content-Type: application/json
    Natsflow-Event-Id: <workflow id>:<seq>      the same for every retry: dedupe on it
    Natsflow-Timestamp: <unix seconds>          when this attempt was signed
    Natsflow-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

Each webhook has a secret of its own, so one receiver cannot forge deliveries to
another: the ``secret`` given at submit, else :func:`derive_secret` of the
orchestrator's webhook secret and the webhook's URL. Only a webhook submitted with
``unsigned: true`` goes without the signature header. A receiver checks it with
:func:`verify_signature` (see docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from .headers import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from .models import EVENT_TERMINAL, Event, Webhook, without_secrets

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE",
    "TIMESTAMP_HEADER",
    "WebhookDelivery",
    "deliveries_for",
    "derive_secret",
    "event_id",
    "sign",
    "verify_signature",
    "wants",
]

#: Seconds a signed timestamp may be off the receiver's clock (replays are refused).
SIGNATURE_TOLERANCE: Final = 300.0
_SCHEME: Final = "v1"


class WebhookDelivery(BaseModel):
    """One event to POST to one webhook (the payload of ``<prefix>.webhooks.<id>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="The webhook's URL, as validated at submit.")
    index: int = Field(ge=0, description="The webhook's place in the config's `webhooks`.")
    event: Event
    # Unset ones stay out of the JSON: deliveries queued before they existed read the same.
    secret: str | None = Field(default=None, repr=False, exclude_if=lambda v: v is None,
                               description="The webhook's own secret, if given at submit.")
    unsigned: bool = Field(default=False, exclude_if=lambda v: not v,
                           description="Sent without a signature, as asked at submit.")

    @model_serializer(mode="wrap")
    def _shown(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return without_secrets(handler(self), info)


def wants(webhook: Webhook, event: Event) -> bool:
    """Whether ``webhook`` is sent ``event``: every event, or only the terminal one."""
    return webhook.events == "all" or event.type in EVENT_TERMINAL


def deliveries_for(webhooks: Sequence[Webhook], event: Event) -> list[WebhookDelivery]:
    """The deliveries one event makes, in the order of the config's webhooks."""
    if not webhooks:
        return []
    return [WebhookDelivery(url=str(hook.url), index=i, event=event, secret=hook.secret,
                            unsigned=hook.unsigned)
            for i, hook in enumerate(webhooks) if wants(hook, event)]


def derive_secret(master: str, url: str) -> str:
    """The secret of a webhook submitted without one: hex HMAC-SHA256(master, URL).

    Args:
        master: The orchestrator's webhook secret (``NATSFLOW_WEBHOOK_SECRET``).
        url: The webhook's URL; normalized as at submit (``https://a.example`` and
            ``https://a.example/`` are one receiver), query included.
    """
    normal = str(Webhook.model_validate({"url": url}).url)
    return hmac.new(master.encode(), normal.encode(), hashlib.sha256).hexdigest()


def event_id(event: Event) -> str:
    """The ``Natsflow-Event-Id`` of an event: ``<workflow id>:<seq>``, unique and stable."""
    return f"{event.workflow_id}:{event.seq}"


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                    hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Natsflow-Signature`` value for ``body`` sent at ``timestamp``: ``v1=<hex>``."""
    return f"{_SCHEME}={_digest(secret, timestamp, body)}"


def verify_signature(secret: str, timestamp: str, body: bytes, header: str, *,
                     tolerance: float | None = SIGNATURE_TOLERANCE,
                     now: float | None = None) -> bool:
    """Check a webhook request's signature, as a receiver should.

    Args:
        secret: The orchestrator's webhook secret.
        timestamp: The ``Natsflow-Timestamp`` header, as received.
        body: The raw request body (not re-serialized JSON).
        header: The ``Natsflow-Signature`` header; a comma-separated list of
            ``v1=<hex>`` is accepted, any one matching will do.
        tolerance: Most seconds between ``timestamp`` and ``now`` (None: no check).
        now: The receiver's clock, Unix seconds (default: ``time.time()``).

    Returns:
        True if the signature is valid (and, with a tolerance, fresh).
    """
    if tolerance is not None:
        try:
            sent = int(timestamp)
        except ValueError:
            return False
        if abs((time.time() if now is None else now) - sent) > tolerance:
            return False
    expected = _digest(secret, timestamp, body).encode()
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        # As bytes: compare_digest refuses a str that is not ASCII (TypeError), and
        # a header is whatever the sender put there (even a lone surrogate).
        got = value.encode("utf-8", "surrogatepass")
        if scheme == _SCHEME and hmac.compare_digest(got, expected):
            return True
    return False
