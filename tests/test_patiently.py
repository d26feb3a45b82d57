"""Start-up declarations wait out a cluster's transient states (transport.streams.patiently).

The container fault suite found an orchestrator that exited at start-up: on a cluster
just restarted, the result key's ``kv.create`` met a stream with no leader yet
(``NoStreamResponseError``), which ``patiently`` did not count as transient.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from contracts.errors import ConfigMismatch
from transport.streams import patiently


@pytest.mark.parametrize("transient", [
    nats.js.errors.NoStreamResponseError(), nats.errors.NoRespondersError(),
    nats.errors.TimeoutError(), nats.js.errors.ServiceUnavailableError()])
async def test_a_transient_failure_is_tried_again(transient: Exception) -> None:
    calls = 0

    async def declare() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise transient
        return "declared"

    assert await patiently("a thing", declare, first_pause=0.01) == "declared"
    assert calls == 3


async def test_anything_else_fails_at_once() -> None:
    calls = 0

    async def declare() -> None:
        nonlocal calls
        calls += 1
        raise ConfigMismatch("no")

    with pytest.raises(ConfigMismatch):
        await patiently("a thing", declare, first_pause=0.01)
    assert calls == 1
