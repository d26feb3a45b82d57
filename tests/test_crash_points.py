"""The crash points of the fault-injection tests: parsing, and how a plan decides.

The crashes themselves are proven by tests/faults, against real processes.
"""

from __future__ import annotations

import functools

import pytest

from contracts.errors import ValidationFailed
from orchestrator import faults
from orchestrator.faults import CrashPlan, parse_crash_at, plan_from_env


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


def test_arm_sets_the_module_plan_the_shell_checks() -> None:
    assert faults.PLAN is None  # nothing in the test process arms it
    try:
        assert faults.arm({"NATSFLOW_CRASH_AT": "before-save:1"}) is faults.PLAN
        assert faults.PLAN is not None
    finally:
        faults.arm({})
    assert faults.PLAN is None


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
