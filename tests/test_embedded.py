"""The embedded nats-server: how many Go threads it runs with, as the server reports it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from natsflow.embedded import EmbeddedNats, free_port, server_procs


def _gomaxprocs(tmp_path: Path) -> int:
    """Start an embedded server with monitoring on, and read GOMAXPROCS from /varz."""
    monitor = free_port()
    with EmbeddedNats(tmp_path, extra_args=["-m", str(monitor)]), \
            urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as r:
        return int(json.load(r)["gomaxprocs"])


def test_the_server_leaves_half_the_cores_to_the_services_unless_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    assert _gomaxprocs(tmp_path / "default") == server_procs()
    monkeypatch.setenv("GOMAXPROCS", str(server_procs() + 2))
    assert _gomaxprocs(tmp_path / "told") == server_procs() + 2


def test_half_the_cores_is_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, procs in ((1, 1), (2, 1), (3, 1), (8, 4)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert server_procs() == procs
