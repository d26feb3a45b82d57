"""How many JetStream writes a workflow costs, counted exactly (issue 17).

bench/writes.py runs one-step workflows and 3-step chains one at a time against a real
nats-server, orchestrator and worker, and counts what every stream stored (last_seq
deltas; KV buckets are streams). The counts are pinned as they are today: more is a
regression; fewer is an improvement, and then these pins must come down with it (and
bench/README.md, "Writes per step (issue 17)", says what changed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = 3

#: Stored messages per workflow, by the stream's name without the deployment's prefix.
ONE_STEP = {"EVENTS": 6, "INBOX": 3, "TASKS": 1, "workflows": 2, "summaries": 2}
#: A 3-step chain: each step after the first adds a task, a result, three events and
#: a record write.
CHAIN = {"EVENTS": 12, "INBOX": 5, "TASKS": 3, "workflows": 4, "summaries": 2}


def _by_kind(phase: dict[str, Any]) -> dict[str, float]:
    return {name.rpartition("_")[2]: s["stored_per_workflow"]
            for name, s in phase["streams"].items()}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "writes.py"), "--workflows", str(WORKFLOWS),
         "--steps", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("phase", "pinned"), [("one-step", ONE_STEP), ("chain", CHAIN)])
def test_writes_per_workflow_are_pinned(report: dict[str, Any], phase: str,
                                        pinned: dict[str, int]) -> None:
    measured = _by_kind(report[phase])
    over = {k: v for k, v in measured.items() if v > pinned.get(k, 0)}
    assert not over, f"more JetStream writes than pinned (a regression): {measured}"
    assert measured == pinned, (f"fewer writes than pinned: an improvement, lower the pins "
                                f"in this file to {measured}")
    assert report[phase]["stored"] == WORKFLOWS * sum(pinned.values())


@pytest.mark.timeout(180)
def test_the_tap_names_every_stored_message(report: dict[str, Any]) -> None:
    # Nothing was dropped as a duplicate and nothing stored unseen: what the subject tap
    # saw published into each stream is what the stream stored.
    for phase in ("one-step", "chain"):
        for name, s in report[phase]["streams"].items():
            assert sum(s["published_per_workflow"].values()) == pytest.approx(
                s["stored_per_workflow"]), (phase, name, s)
    assert report["chain"]["streams"] and report["per_step"]["marginal"] == 6.0
