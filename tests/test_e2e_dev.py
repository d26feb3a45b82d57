"""``natsflow dev`` started as a user starts it, driven over HTTP only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from natsflow.dev import DEMO_WORKFLOW, demo_curl
from natsflow.embedded import free_port

pytestmark = pytest.mark.e2e


def _children_of(pid: int) -> set[int]:
    """Direct children of ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dev_runs_a_workflow_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NATSFLOW_PREFIX")}
    natsflow = Path(sys.executable).parent / "natsflow"
    proc = subprocess.Popen([str(natsflow), "dev", "--ephemeral", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        # As a user does: wait for the banner, then paste its curl.
        while not any("curl" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "natsflow dev never printed its banner"
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=5) as http:
            assert http.get("/readyz").status_code == 200
            children = _children_of(proc.pid)
            # nats-server, orchestrator, index, gateway and the demo worker
            assert len(children) == 5, children

            created = http.post("/workflows", json=DEMO_WORKFLOW)
            assert created.status_code == 202, created.text
            workflow_id = created.json()["id"]
            while True:
                status = http.get(f"/workflows/{workflow_id}").json()
                if status["state"] in ("completed", "failed", "stopped"):
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
        assert status["state"] == "completed", status
        assert status["output"] == {"add": {"sum": 5}}
        assert status["steps"][0]["output"] == {"message": "hello world"}
        with httpx.Client(base_url=url, timeout=5) as http:
            listed = http.get("/workflows", params={"state": "completed"}).json()["items"]
            while not listed:  # the index follows the engine closely, not in lockstep
                assert time.monotonic() < deadline
                time.sleep(0.2)
                listed = http.get("/workflows", params={"state": "completed"}).json()["items"]
            assert listed[0]["id"] == workflow_id

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()
    out = "".join(lines)
    assert proc.returncode == 0, out
    # What the banner tells the user to paste is what this test posted.
    assert demo_curl(url) in out
    assert f"{url}/docs" in out
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, [p for p in children if _alive(p)]
        time.sleep(0.1)
    assert not (tmp_path / ".natsflow").exists()  # --ephemeral keeps nothing
