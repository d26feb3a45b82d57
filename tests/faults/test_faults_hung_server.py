"""A server that hangs (SIGSTOP: its sockets stay open) is noticed by missed pongs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fault_nats import NatsNode

import transport.connect
from transport.connect import NatsSettings, connect

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


async def test_a_hung_server_is_noticed_within_a_few_pings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten times faster than in production (10 s), so the test takes seconds.
    monkeypatch.setattr(transport.connect, "PING_INTERVAL", 0.5)
    node = NatsNode(tmp_path / "store").start()
    states: list[str] = []

    async def on_state(state: str) -> None:
        states.append(state)

    try:
        nc = await connect(NatsSettings(servers=[node.url], prefix="hung"), name="probe",
                           on_state=on_state)
        loop = asyncio.get_running_loop()
        node.pause()
        paused_at = loop.time()
        while "disconnected" not in states:
            # Three pings unanswered: about 1.5 s here, about 30 s at the default.
            assert loop.time() - paused_at < 10, "the hung server was not noticed"
            await asyncio.sleep(0.1)
        node.resume()
        while states[-1] != "reconnected":
            assert loop.time() - paused_at < 30, f"no reconnect: {states}"
            await asyncio.sleep(0.1)
        await nc.close()
    finally:
        node.close()
