"""``natsflow dev --secure``: the same system, each service as its own least-privileged
NATS user, and anonymous clients refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from contracts.errors import NatsAuthFailed
from natsflow.client import NatsflowClient
from natsflow.dev import DEMO_WORKFLOW
from natsflow.embedded import free_port
from transport.connect import NatsSettings, connect

pytestmark = pytest.mark.e2e


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_dev_secure_runs_each_service_as_its_own_user(tmp_path: Path) -> None:
    port, nats_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NATS") or k == "NATSFLOW_LOG_FORMAT"}
    natsflow = Path(sys.executable).parent / "natsflow"
    data = tmp_path / "data"
    proc = subprocess.Popen([str(natsflow), "dev", "--secure", "--data-dir", str(data),
                             "--port", str(port), "--nats-port", str(nats_port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("curl" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "natsflow dev never printed its banner"
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            created = http.post("/workflows", json=DEMO_WORKFLOW)
            assert created.status_code == 202, created.text
            wid = created.json()["id"]
            while (status := http.get(f"/workflows/{wid}").json())["state"] not in (
                    "completed", "failed", "stopped"):
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
        assert status["state"] == "completed", status
        assert status["output"] == {"add": {"sum": 5}}
        users = data / "nats-users"
        assert sorted(p.name for p in users.glob("*.env")) == [
            "gateway.env", "index.env", "orchestrator.env", "submitter.env", "watcher.env",
            "worker.env"]
        assert all(p.stat().st_mode & 0o077 == 0 for p in users.iterdir())
        asyncio.run(_as_users(f"nats://127.0.0.1:{nats_port}", users, wid))
        out = "".join(lines)
        assert "watcher.env" in out  # the banner says how the CLI gets in
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        stdout.close()
    assert proc.returncode == 0, "".join(lines)
    # No service was refused anything it does. (A worker or the index that starts before
    # the orchestrator may try to create a stream it then waits for: refused, as meant.)
    refusals = [line for p in (data / "logs").glob("*.log")
                for line in p.read_text().splitlines() if "NATS refused" in line]
    assert all('"$js.api.stream.create.' in line for line in refusals), refusals


async def _as_users(url: str, users: Path, wid: str) -> None:
    with pytest.raises(NatsAuthFailed):
        await connect(NatsSettings(servers=[url]), name="anonymous", timeout=5)
    watcher = NatsSettings.from_env(_env_file(users / "watcher.env"))
    assert watcher.inbox_prefix == "_INBOX.watcher"
    nc = await connect(watcher, name="test-watcher")
    try:
        client = NatsflowClient(nc, watcher.subjects)
        events = [e.type.value async for e in client.events(wid, follow=False)]
        assert events[-1] == "workflow.completed"
    finally:
        await nc.close()
