"""What the container tests need from the machine: a Docker engine, docker-compose.

Without them those tests FAIL in CI (``CI`` set, as .ci/run runs), so that a run whose
engine did not start cannot pass by skipping them; elsewhere (or with
NATSFLOW_SKIP_CONTAINERS=1) they are skipped with the reason.
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
    # In CI (.ci/run starts an engine, CI=true) a missing engine is a failure, so a run
    # whose engine did not start cannot pass by skipping; on a developer's machine
    # without Docker the README's `uv run pytest` skips these, saying why.
    if os.environ.get("NATSFLOW_SKIP_CONTAINERS") == "1" or not os.environ.get("CI"):
        pytest.skip(f"no Docker engine here ({problem}); {_HOW}")
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
