"""What the container tests need from the machine: a Docker engine, docker-compose.

Without them those tests FAIL, so that a CI run whose engine did not start cannot pass
by skipping them; NATSFLOW_SKIP_CONTAINERS=1 turns the failure into a skip, for a
machine known to have no Docker.
"""

from __future__ import annotations

import os
import shutil

import pytest

from natsflow.containers import docker_problem

__all__ = ["require_compose", "require_docker"]

_HOW = ("run `dockerd --storage-driver=vfs` as root (.ci/run does), or set "
        "NATSFLOW_SKIP_CONTAINERS=1 to skip the container tests")


def _missing(problem: str) -> None:
    if os.environ.get("NATSFLOW_SKIP_CONTAINERS") == "1":
        pytest.skip(f"NATSFLOW_SKIP_CONTAINERS=1: {problem}")
    pytest.fail(f"{problem}; {_HOW}", pytrace=False)


def require_docker() -> None:
    """Fail (or skip, when asked to) unless a Docker engine answers."""
    problem = docker_problem()
    if problem is not None:
        _missing(problem)


def require_compose() -> str:
    """The ``docker-compose`` command (Debian's package), or fail (or skip) without it."""
    found = shutil.which("docker-compose")
    if found is None:
        _missing("docker-compose is not installed (apt-get install docker-compose)")
    assert found is not None
    return found
