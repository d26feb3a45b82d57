"""Every header name natsflow sets or reads (one home per fact).

NATS headers first (JetStream's, the NATS micro convention's, natsflow's own), then the
HTTP headers of natsflow's own making (webhooks, the gateway). No other module writes one
of these names as a literal; ``tests/test_wire_facts.py`` keeps it so.

NATS header names are matched exactly (nats-py keeps their case); HTTP header names are
matched without case, as HTTP says.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "EVENT_ID_HEADER",
    "EXPECTED_LAST_SUBJECT_SEQ",
    "HEADERS",
    "IDEMPOTENCY_KEY_HEADER",
    "KV_OPERATION_HEADER",
    "LAST_EVENT_ID_HEADER",
    "MARKER_REASON_HEADER",
    "MSG_ID",
    "OUTCOME_ERROR_HEADER",
    "PENDING_MESSAGES_HEADER",
    "REPLY_HEADER",
    "SIGNATURE_HEADER",
    "STATUS_DESCRIPTION_HEADER",
    "STATUS_HEADER",
    "TIMESTAMP_HEADER",
    "TRACEPARENT",
    "TRACESTATE",
]

# -- JetStream ----------------------------------------------------------------------------
#: Deduplication id: JetStream stores one message per id within the stream's window.
MSG_ID: Final = "Nats-Msg-Id"
#: A conditional write: store only if the subject's last sequence is this one.
EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
#: On a pull request's status reply: how many messages it still asked for.
PENDING_MESSAGES_HEADER: Final = "Nats-Pending-Messages"
#: On a KV entry the server wrote itself (a TTL delete): why.
MARKER_REASON_HEADER: Final = "Nats-Marker-Reason"
#: On a KV entry: ``DEL`` or ``PURGE`` for a delete marker.
KV_OPERATION_HEADER: Final = "KV-Operation"
#: A status message's code (``100`` heartbeat, ``408`` request expired, ``409``...).
STATUS_HEADER: Final = "Status"
#: A status message's reason, e.g. ``Leadership Change``.
STATUS_DESCRIPTION_HEADER: Final = "Description"

# -- NATS micro services (the API's error replies) ---------------------------------------
#: The natsflow error code of an API error reply (its body is an ``ErrorInfo``).
ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"
#: The error's message, cut to 200 characters.
ERROR_HEADER: Final = "Nats-Service-Error"

# -- natsflow's own, on NATS --------------------------------------------------------------
#: On a command: the subject the engine sends the command's outcome to.
REPLY_HEADER: Final = "Natsflow-Reply"
#: On a command's outcome: the error code, when the command was refused.
OUTCOME_ERROR_HEADER: Final = "Natsflow-Error"

# -- W3C Trace Context (NATS and HTTP; lower case, as the spec writes them) ----------------
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

# -- HTTP: webhooks -------------------------------------------------------------------------
#: ``<workflow id>:<seq>``, the same for every retry of a delivery: dedupe on it.
EVENT_ID_HEADER: Final = "Natsflow-Event-Id"
#: Unix seconds when this attempt was signed.
TIMESTAMP_HEADER: Final = "Natsflow-Timestamp"
#: ``v1=<hex HMAC-SHA256>`` of ``<timestamp>.<body>``.
SIGNATURE_HEADER: Final = "Natsflow-Signature"

# -- HTTP: the gateway ----------------------------------------------------------------------
#: A create's idempotency key: the same key gives the same workflow.
IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
#: Where a reconnecting EventSource resumes (the last event's ``seq``).
LAST_EVENT_ID_HEADER: Final = "Last-Event-ID"

#: Every name above.
HEADERS: Final = frozenset({
    MSG_ID, EXPECTED_LAST_SUBJECT_SEQ, PENDING_MESSAGES_HEADER, MARKER_REASON_HEADER,
    KV_OPERATION_HEADER, STATUS_HEADER, STATUS_DESCRIPTION_HEADER, ERROR_CODE_HEADER,
    ERROR_HEADER, REPLY_HEADER, OUTCOME_ERROR_HEADER, TRACEPARENT, TRACESTATE,
    EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, IDEMPOTENCY_KEY_HEADER,
    LAST_EVENT_ID_HEADER,
})
