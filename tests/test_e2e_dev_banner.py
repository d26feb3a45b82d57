"""What ``natsflow dev`` prints works as printed (issue 14, items 12 and 15): its CLI
commands reach the deployment it started on another NATS port and prefix, and its
metrics URL answers. ``natsflow dev`` and the commands run as a user runs them."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from natsflow.dev import DEMO_WORKFLOW
from natsflow.embedded import free_port

pytestmark = pytest.mark.e2e

NATSFLOW = str(Path(sys.executable).parent / "natsflow")


def _user_env() -> dict[str, str]:
    """A shell with no natsflow settings: the printed commands must carry them."""
    return {k: v for k, v in os.environ.items()
            if k not in ("NATS_URL", "NATSFLOW_PREFIX", "NATSFLOW_METRICS_HOST")}


def _listening_hosts(port: int) -> set[str]:
    """The local addresses listening on TCP ``port`` (IPv4), from /proc/net/tcp."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            hosts.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return hosts


def _printed_command(out: str, starts: str, workflow_id: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(starts)]
    argv = shlex.split(line.replace("<id>", workflow_id))
    assert argv[:3] == ["uv", "run", "natsflow"], line
    return [NATSFLOW, *argv[3:]]


def test_dev_banner_commands_and_metrics_work_as_printed(tmp_path: Path) -> None:
    port, nats_port = free_port(), free_port()
    prefix = "devb" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(
        [NATSFLOW, "dev", "--ephemeral", "--port", str(port), "--nats-port", str(nats_port)],
        env={**_user_env(), "NATSFLOW_PREFIX": prefix}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("natsflow events <id>" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "natsflow dev never printed its banner"
            time.sleep(0.1)
        out = "".join(lines)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            created = http.post("/workflows", json=DEMO_WORKFLOW)
        assert created.status_code == 202, created.text
        wid = created.json()["id"]

        # Pasted into a shell that knows nothing of this deployment.
        follow = subprocess.run(_printed_command(out, "uv run natsflow events", wid),
                                env=_user_env(), capture_output=True, text=True, timeout=60)
        assert follow.returncode == 0, out + follow.stdout + follow.stderr
        assert "workflow.completed" in follow.stdout
        status = subprocess.run(_printed_command(out, "uv run natsflow status", wid),
                                env=_user_env(), capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, out + status.stdout + status.stderr
        assert "completed" in status.stdout

        # The first URL of the banner is the web UI's, and it answers.
        urls = re.findall(r"http://\S+", out)
        assert urls[0] == f"http://127.0.0.1:{port}/ui/", out
        ui_page = httpx.get(urls[0], timeout=5)
        assert ui_page.status_code == 200 and "<title>Runs" in ui_page.text

        (metrics_url,) = re.findall(r"metrics\s+(http://\S+/metrics)", out)
        metrics = httpx.get(metrics_url, timeout=5)
        assert metrics.status_code == 200
        assert "natsflow_workflows_started_total" in metrics.text
        metrics_port = int(metrics_url.rsplit(":", 1)[1].split("/")[0])
        assert _listening_hosts(metrics_port) == {"127.0.0.1"}

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:  # a failed assertion: stop dev so it stops its children
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
        stdout.close()
    assert proc.returncode == 0, "".join(lines)


def test_orchestrator_metrics_listen_on_localhost_unless_told(tmp_path: Path) -> None:
    from natsflow.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {**_user_env(), "NATS_URL": server.url,
               "NATSFLOW_PREFIX": "m" + uuid.uuid4().hex[:8]}
        ports = {None: free_port(), "0.0.0.0": free_port()}
        for host, p in ports.items():
            extra = [] if host is None else ["--metrics-host", host]
            with open(tmp_path / f"orch-{p}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [NATSFLOW, "orchestrator", "--metrics-port", str(p), *extra],
                    env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        for host, p in ports.items():
            while not _listening_hosts(p):
                assert all(pr.poll() is None for pr in procs), [
                    f.read_text() for f in tmp_path.glob("orch-*.log")]
                assert time.monotonic() < deadline, (tmp_path / f"orch-{p}.log").read_text()
                time.sleep(0.1)
            assert _listening_hosts(p) == {host or "127.0.0.1"}
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(20)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait()
        server.stop()
