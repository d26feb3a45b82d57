"""The NATS plumbing every natsflow process shares: nats-py and JetStream I/O, no wire facts.

What is on the wire (subjects, headers, models, errors, the operation table) is
:mod:`contracts`; this package moves it. It owns:

- :mod:`transport.connect`: connection settings and connecting (``NatsSettings``, ``connect``);
- :mod:`transport.streams`: the streams and buckets natsflow declares (``Topology``);
- :mod:`transport.publish`: the publisher (JetStream acks, compare-and-set appends), on
  :mod:`transport._natspy_shortcut`, the one module that relies on nats-py internals;
- :mod:`transport.consume`: the pull-consumer loop;
- :mod:`transport.transient`: which NATS errors are worth a retry;
- :mod:`transport.tracing`: W3C trace context in headers, OpenTelemetry when enabled;
- :mod:`transport.keys`: the API keys bucket (watch, make, list, revoke).

It depends on :mod:`contracts` only, never on the orchestrator, the gateway or the SDK.
"""

__all__ = ["connect", "consume", "keys", "publish", "streams", "tracing", "transient"]
