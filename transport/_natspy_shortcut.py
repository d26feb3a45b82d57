"""natsflow's one short cut through nats-py's private internals: fenced, pinned, tested.

Every message the orchestrator stores costs a publish and a pub-ack through nats-py.
Two of nats-py's per-message costs are skipped here, because they show on the
orchestrator's CPU per workflow (``bench/paired.py --load 500 --rounds 10``, public API
only against this module, B won 0 of 10 rounds each time): publishing through
``Client.publish`` costs +3%, acks through a subscription callback +5%, both +8%, and
``JetStreamContext.publish_async`` +30%.

* :func:`send` writes a ``PUB``/``HPUB`` command into the client's outgoing buffer as
  ``Client.publish`` does for a message that needs no cleaning up, minus the header
  normalisation and the checks it has already made: ``_send_command(cmd)``, then
  ``_flush_pending()`` to wake the flusher if it is idle, and the same ``stats``.
* :func:`route` hands the messages of one subscription to a plain function as they are
  parsed (``Client._process_msg`` wrapped once per client), without a ``Msg``, a queue
  and a task switch per message.

Anything else goes the public way, so its errors are nats-py's own: not connected
(reconnecting: ``OutboundBufferLimitError`` once the pending buffer is full, or at once
without one), draining, closed, an oversized payload, a subject or a header nats-py would
refuse, trim or clean. Everything goes the public way (:data:`ENABLED` is False) when
the installed nats-py is not one this was verified on (:data:`VERIFIED`, also pinned in
``pyproject.toml``), or its private signatures differ from those assumed.

``tests/test_natspy_shortcut.py`` checks on a real server that these internals still
mean what this module assumes (the bytes ``publish`` writes, what the buffer and the
flusher do, the dispatch's arguments and counters, the limits and errors), so a nats-py
upgrade that changes them fails there rather than in production.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import nats.aio.client
from nats.aio.client import Client
from nats.aio.subscription import Subscription

__all__ = ["ENABLED", "VERIFIED", "pub_command", "route", "send", "unroute"]

#: The nats-py releases (major, minor) this module was verified on.
VERIFIED = frozenset({(2, 16)})
#: The private signatures relied on, as parameter names.
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "_send_command": ("self", "cmd", "priority"),
    "_flush_pending": ("self", "force_flush"),
    "_process_msg": ("self", "sid", "subject", "reply", "data", "headers"),
}
#: What nats-py refuses in a subject (a space or line break would forge protocol).
_UNSAFE_SUBJECT = re.compile(r"[ \t\r\n]")
#: A header name as nats-py accepts it.
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The attribute of a client holding its routes (set when its dispatch is wrapped).
_ROUTES = "_natsflow_routes"

#: A route's receiver: (subject, data) of a message without headers.
Receiver = Callable[[bytes, bytes], None]


def _verified() -> bool:
    """Whether the installed nats-py is one this module was checked on."""
    match = re.match(r"(\d+)\.(\d+)\.", nats.aio.client.__version__)
    if match is None or (int(match[1]), int(match[2])) not in VERIFIED:
        return False
    for name, params in _SIGNATURES.items():
        method = getattr(Client, name, None)
        if method is None or tuple(inspect.signature(method).parameters) != params:
            return False
    return True


#: Whether the short cut is taken (else every call goes through nats-py's public API).
ENABLED = _verified()


def pub_command(subject: str, reply: str, payload: bytes,
                headers: dict[str, str] | None) -> bytes | None:
    """The PUB or HPUB command ``Client.publish`` would write; None where nats-py must
    judge (an empty or unsafe subject, or a header it would trim, clean or refuse).

    One difference, on purpose: empty headers (``{}``) are written as no headers (PUB),
    where nats-py writes an HPUB with an empty header block; a subscriber gets the
    same message either way (no headers), for fewer bytes.
    """
    if not subject or _UNSAFE_SUBJECT.search(subject) or _UNSAFE_SUBJECT.search(reply):
        return None
    if not headers:
        return b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), reply.encode(), len(payload),
                                            payload)
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        if (not _HEADER_KEY.fullmatch(key) or value != value.strip()
                or "\r" in value or "\n" in value):
            return None
        lines.append(f"{key}: {value}\r\n")
    lines.append("\r\n")
    hdr = "".join(lines).encode()
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (subject.encode(), reply.encode(), len(hdr),
                                                len(hdr) + len(payload), hdr, payload)


async def send(nc: Client, subject: str, payload: bytes, *, reply: str = "",
               headers: dict[str, str] | None = None) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)``, the short way
    when it can be taken (see the module's docstring); errors are nats-py's own."""
    # is_connected holds while draining too: nats-py's publish judges that phase.
    cmd = (pub_command(subject, reply, payload, headers)
           if ENABLED and nc.is_connected and not nc.is_draining
           and len(payload) <= nc.max_payload else None)
    if cmd is None:
        await nc.publish(subject, payload, reply=reply, headers=headers)
        return
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    await nc._send_command(cmd)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def _routes(nc: Client) -> dict[int, Receiver]:
    """The client's routes by subscription id; its dispatch is wrapped on first use."""
    routes: dict[int, Receiver] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        return routes
    dispatch = nc._process_msg
    table: dict[int, Receiver] = {}
    stats = nc.stats

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes,
                          headers: bytes | None) -> None:
        receiver = table.get(sid)
        if receiver is None or headers:
            await dispatch(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        stats["in_msgs"] += 1  # as nats-py counts every message it is given
        stats["in_bytes"] += len(data)
        receiver(subject, data)

    nc._process_msg = process_msg  # type: ignore[method-assign]
    setattr(nc, _ROUTES, table)
    return table


def route(nc: Client, sub: Subscription, receiver: Receiver) -> bool:
    """Hand ``sub``'s messages without headers to ``receiver`` as they are parsed,
    instead of to its callback (which still gets the rest).

    Returns:
        False if the short cut is not taken: then every message goes to the callback.
    """
    sid = getattr(sub, "_id", None)
    if not ENABLED or not isinstance(sid, int):
        return False
    _routes(nc)[sid] = receiver
    return True


def unroute(nc: Client, sub: Subscription) -> None:
    """Undo :func:`route` (nothing if ``sub`` was not routed)."""
    routes: dict[int, Any] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        routes.pop(getattr(sub, "_id", None), None)  # type: ignore[arg-type]
