"""The serving processes' event loop (natsflow/_loop.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop
from typer.testing import CliRunner

from contracts.errors import InvalidRequest
from natsflow._loop import loop_factory, run_served
from natsflow.cli import app


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_services_run_on_uvloop_unless_told_otherwise() -> None:
    for env in ({}, {"NATSFLOW_EVENT_LOOP": "auto"}, {"NATSFLOW_EVENT_LOOP": " UVLOOP "}):
        assert run_served(_loop_type(), loop_factory(env)) is uvloop.Loop, env
    plain = run_served(_loop_type(), loop_factory({"NATSFLOW_EVENT_LOOP": "asyncio"}))
    assert plain is not uvloop.Loop
    assert issubclass(plain, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidRequest) as err:
        loop_factory({"NATSFLOW_EVENT_LOOP": "trio"})
    assert err.value.field == "NATSFLOW_EVENT_LOOP"
    result = CliRunner(env={"NATSFLOW_EVENT_LOOP": "trio",
                            "NATS_URL": "nats://127.0.0.1:1"}).invoke(app, ["index"])
    assert result.exit_code == 2, result.output
    assert "NATSFLOW_EVENT_LOOP" in result.output


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" now fails
    assert loop_factory({}) is None
    assert loop_factory({"NATSFLOW_EVENT_LOOP": "auto"}) is None
    with pytest.raises(InvalidRequest) as err:
        loop_factory({"NATSFLOW_EVENT_LOOP": "uvloop"})
    assert err.value.field == "NATSFLOW_EVENT_LOOP"
    assert "not installed" in err.value.message
