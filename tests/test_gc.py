"""Garbage-collector tuning of the serving processes (natsflow/_gc.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from contracts.errors import InvalidRequest
from natsflow._gc import GC_THRESHOLD, threshold_from_env, tune_gc
from natsflow.cli import app


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    gc.unfreeze()  # whatever an earlier test froze
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_thresholds_come_from_the_environment() -> None:
    assert threshold_from_env({}) == GC_THRESHOLD
    assert threshold_from_env({"NATSFLOW_GC_THRESHOLD": " 1000,5,5 "}) == (1000, 5, 5)
    assert threshold_from_env({"NATSFLOW_GC_THRESHOLD": "default"}) is None
    for bad in ("1,2", "a,b,c", "0,1,1", "1,2,3,4"):
        with pytest.raises(InvalidRequest) as err:
            threshold_from_env({"NATSFLOW_GC_THRESHOLD": bad})
        assert err.value.field == "NATSFLOW_GC_THRESHOLD"


def test_tuning_freezes_start_up_and_sets_the_thresholds(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc({"NATSFLOW_GC_THRESHOLD": "default"}) == (700, 10, 10)
    assert gc.get_freeze_count() == 0
    assert tune_gc({}) == GC_THRESHOLD == gc.get_threshold()
    assert gc.get_freeze_count() > 0


def test_a_service_refuses_to_start_with_a_malformed_setting() -> None:
    result = CliRunner(env={"NATSFLOW_GC_THRESHOLD": "lots",
                            "NATS_URL": "nats://127.0.0.1:1"}).invoke(app, ["index"])
    assert result.exit_code == 2, result.output
    assert "NATSFLOW_GC_THRESHOLD" in result.output
