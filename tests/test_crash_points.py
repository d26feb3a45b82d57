"""The crash points of the fault-injection tests: parsing, how a plan decides, and the
orchestrator passing the points it is given.

The crashes themselves are proven by tests/faults, against real processes.
"""

from __future__ import annotations

import functools

import pytest
from helpers import running_demo_worker
from nats.aio.client import Client

from contracts.errors import ValidationFailed
from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator, faults
from orchestrator.faults import CrashPlan, parse_crash_at, plan_from_env
from transport.connect import NatsSettings


def test_a_spec_lists_points_with_their_probabilities() -> None:
    assert parse_crash_at("after-save:0.02, after-publish:0.5,before-save:1") == {
        "after-save": 0.02, "after-publish": 0.5, "before-save": 1.0}
    assert parse_crash_at("") == {}
    assert parse_crash_at(" , ") == {}


@pytest.mark.parametrize(("spec", "why"), [
    ("after-sav:0.1", "unknown crash point 'after-sav'"),
    ("after-save", "has no probability"),
    ("after-save:often", "is not a number"),
    ("after-save:1.5", "outside [0, 1]"),
    ("after-save:-0.1", "outside [0, 1]"),
])
def test_a_bad_spec_is_refused_naming_the_variable(spec: str, why: str) -> None:
    with pytest.raises(ValidationFailed, match=why.replace("[", r"\[")) as err:
        parse_crash_at(spec)
    assert err.value.code == "validation-failed"
    assert err.value.field == "NATSFLOW_CRASH_AT"


def test_the_environment_arms_a_plan_only_when_asked() -> None:
    assert plan_from_env({}) is None
    assert plan_from_env({"NATSFLOW_CRASH_AT": ""}) is None
    plan = plan_from_env({"NATSFLOW_CRASH_AT": "after-save:0.25", "NATSFLOW_CRASH_SEED": "7"})
    assert plan is not None
    assert plan.odds == {"after-save": 0.25} and plan.seed == 7
    with pytest.raises(ValidationFailed) as err:
        plan_from_env({"NATSFLOW_CRASH_AT": "after-save:0.25", "NATSFLOW_CRASH_SEED": "x"})
    assert err.value.field == "NATSFLOW_CRASH_SEED"


class Recorder:
    """Crash points that note where the shell passed, and never crash."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    def reach(self, point: str) -> None:
        self.reached.append(point)


async def test_the_orchestrator_passes_its_crash_points_in_order(
        settings: NatsSettings, nc: Client) -> None:
    points = Recorder()
    async with Orchestrator(settings, crash_points=points), running_demo_worker(settings):
        client = NatsflowClient(nc, settings.subjects)
        await client.create({"id": "crashpoints", "name": "crashpoints", "steps": [
            {"id": "a", "task": "demo.noop"}, {"id": "b", "task": "demo.noop",
                                               "depends_on": ["a"]}]})
        done = await client.wait("crashpoints", timeout=20)
    assert done.status is not None and done.status.state == WorkflowState.COMPLETED
    # Every transition that writes passes all three, in the order of the module doc
    # (the next one may start before the acks of the last are in, and one that writes
    # nothing waits for the acks of the last as well: after-publish again).
    seen = dict.fromkeys(faults.POINTS, 0)
    for point in points.reached:
        seen[point] += 1
        assert seen["before-save"] >= seen["after-save"], points
        assert seen["after-publish"] <= 0 or seen["after-save"] > 0, points
    assert seen["before-save"] == seen["after-save"] >= 3, points
    assert seen["after-publish"] >= seen["after-save"], points


def test_nothing_in_the_test_process_crashes_by_default() -> None:
    assert plan_from_env({}) is None
    faults.NO_CRASHES.reach("before-save")  # passes, for any point


def _deaths(plan: CrashPlan, point: str, times: int) -> list[int]:
    died: list[int] = []
    for i in range(times):
        plan.kill = functools.partial(died.append, i)
        plan.reach(point)
    return died


def test_a_plan_dies_at_its_points_with_their_odds_and_is_reproducible() -> None:
    odds = {"after-save": 0.1, "after-publish": 1.0}
    first = _deaths(CrashPlan(odds, seed=3), "after-save", 2000)
    assert 120 < len(first) < 280  # about 10%
    assert first == _deaths(CrashPlan(odds, seed=3), "after-save", 2000)
    assert first != _deaths(CrashPlan(odds, seed=4), "after-save", 2000)
    assert len(_deaths(CrashPlan(odds, seed=3), "after-publish", 50)) == 50
    assert _deaths(CrashPlan(odds, seed=3), "before-save", 50) == []
