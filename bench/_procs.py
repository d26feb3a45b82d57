"""The benchmark's child processes, and what /proc says about them (RSS, CPU time)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _sync import SYNC_CONFIG
from nats.aio.client import Client

from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect

__all__ = ["Deployment", "Service", "cpu_seconds", "deployment", "rss_kib"]

_SERVE = Path(__file__).with_name("_serve.py")
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces; the fields after its closing paren are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Service:
    """One natsflow service started with ``bench/_serve.py ROLE``.

    Args:
        role: ``orchestrator``, ``worker``, ``demo-worker`` or ``raw-worker``.
        env: NATS_URL, NATSFLOW_PREFIX and whatever else the child needs.
        log_path: Where the child's stdout and stderr go.
        profile_path: When set, the child runs under cProfile and writes stats here.
    """

    role: str
    env: dict[str, str]
    log_path: Path
    profile_path: Path | None = None
    script: Path = _SERVE  # another checkout's bench/_serve.py runs that tree's code
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> Service:
        """Start the child (readiness is the caller's business)."""
        env = {**os.environ, **self.env}
        if self.profile_path is not None:
            env["NATSFLOW_BENCH_PROFILE"] = str(self.profile_path)
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, str(self.script), self.role], env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the service stops gracefully, a profile is written), then SIGKILL."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Deployment:
    """A benchmark's own nats-server, its services and a connection to it."""

    server: EmbeddedNats
    settings: NatsSettings
    services: list[Service]
    nc: Client

    def alive(self) -> bool:
        """Every service still runs."""
        return all(s.alive() for s in self.services)


@contextlib.asynccontextmanager
async def deployment(workdir: Path, *, name: str, sync: str = "default",
                     roles: Sequence[str] = ("orchestrator", "worker"),
                     ) -> AsyncIterator[Deployment]:
    """Start a nats-server (``sync``: a key of ``SYNC_CONFIG``) and ``roles``, connect;
    on the way out drain, stop the services (last first) and the server."""
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log",
                          config=SYNC_CONFIG[sync])
    settings = NatsSettings(servers=[server.url], prefix=name + uuid.uuid4().hex[:6])
    env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": settings.prefix}
    services: list[Service] = []
    server.start()
    try:
        for role in roles:
            services.append(Service(role, env, workdir / f"{role}.log").start())
        nc = await connect(settings, name=f"bench-{name}")
        try:
            yield Deployment(server, settings, services, nc)
        finally:
            await nc.drain()
    finally:
        for svc in reversed(services):
            svc.stop()
        server.stop()
