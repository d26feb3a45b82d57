"""natsflow.testing: the environment a user's test gets, and its clock that skips time.

Everything runs against the session's real nats-server; the plugin's session fixture is
pointed at it, so each test's environment is an orchestrator with a prefix of its own.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from docker_env import require_docker
from pydantic import BaseModel

from contracts.messages import TaskSucceeded
from contracts.models import EVENT_TERMINAL, EventType, StepState, WorkflowState
from natsflow.embedded import EmbeddedNats
from natsflow.testing import (
    NATS_PROVIDERS,
    EmbeddedNatsProvider,
    ExternalNats,
    WaitFailed,
    WorkflowEnvironment,
    nats_provider,
)
from natsflow.worker import TaskContext, TaskError, Worker

pytest_plugins = ["pytester"]

NO_SKIP = pytest.mark.parametrize("natsflow_env_options", [{"auto_skip": False}])


@pytest.fixture(scope="session")
def natsflow_nats_servers(nats_server: EmbeddedNats) -> list[str]:
    """The plugin's environments run on the suite's own server."""
    return [nats_server.url]


class Order(BaseModel):
    n: int


def flaky_worker(fails: int = 1) -> tuple[Worker, list[int]]:
    """``app.double`` fails (retryably) its first ``fails`` attempts; attempts seen."""
    worker = Worker(name="test-flaky", stop_grace=0.5)
    seen: list[int] = []

    @worker.task("app.double")
    async def double(ctx: TaskContext, data: Order) -> dict[str, int]:
        seen.append(ctx.attempt)
        if len(seen) <= fails:
            raise TaskError("card-declined", "try again later")
        return {"n": data.n * 2}

    return worker, seen


def nap_then_double(nap: str, *, backoff: float = 3600, then: str | None = None
                    ) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"id": "nap", "kind": "sleep", "duration": nap},
        {"id": "double", "task": "app.double", "depends_on": ["nap"],
         "input": {"n": "${input.n}"},
         "retry": {"max_attempts": 3, "initial_interval": backoff, "max_interval": backoff}}]
    if then is not None:
        steps.append({"id": "rest", "kind": "sleep", "duration": then,
                      "depends_on": ["double"]})
    return {"name": "nap-then-double", "input": {"n": 21}, "steps": steps}


async def test_a_day_of_sleep_and_an_hour_of_backoff_are_skipped(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    worker, seen = flaky_worker(fails=1)
    await env.run_worker(worker)
    began = env.now()
    wid = await env.submit(nap_then_double("24h"))
    # Not a day: the clock jumps to each timer once nothing else is happening.
    status = await env.wait(wid, timeout=20)
    assert status.state == WorkflowState.COMPLETED, status.error
    assert status.step("double").output == {"n": 42}
    assert seen == [1, 2]
    nap, double = status.step("nap"), status.step("double")
    assert nap.finished_at is not None and double.finished_at is not None
    assert nap.finished_at - began >= timedelta(hours=24)
    assert double.finished_at - nap.finished_at >= timedelta(hours=1)
    assert env.now() - began >= timedelta(hours=25)


@NO_SKIP
async def test_sleep_moves_the_clock_and_fires_only_what_is_due(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    wid = await env.submit({"name": "nap", "steps": [
        {"id": "nap", "kind": "sleep", "duration": "1h"}]})
    await env.wait(wid, "waiting", step="nap", timeout=10)
    await env.sleep(minutes=59)
    assert (await env.get(wid)).step("nap").state == StepState.WAITING
    await env.sleep(minutes=1)
    # sleep() returns once the timer it fired has been acted on.
    assert (await env.get(wid)).state == WorkflowState.COMPLETED


@NO_SKIP
async def test_without_auto_skip_a_timer_waits_for_real_time(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    wid = await env.submit({"name": "nap", "steps": [
        {"id": "nap", "kind": "sleep", "duration": "1h"}]})
    with pytest.raises(WaitFailed, match="nap waiting"):
        await env.wait(wid, timeout=1.0)
    assert env.clock.skipped == timedelta()


@NO_SKIP
async def test_sleep_fires_the_timers_armed_on_the_way(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    worker, seen = flaky_worker(fails=1)
    await env.run_worker(worker)
    wid = await env.submit(nap_then_double("10m", backoff=3600, then="30m"))
    await env.wait(wid, "waiting", step="nap", timeout=10)
    # 10m nap, a failure, 1h backoff, a success, a 30m rest: all inside two hours.
    await env.sleep(hours=2)
    status = await env.get(wid)
    assert status.state == WorkflowState.COMPLETED, [(s.id, s.state) for s in status.steps]
    assert seen == [1, 2]


@NO_SKIP
async def test_a_short_sleep_leaves_the_backoff_for_later(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    worker, seen = flaky_worker(fails=1)
    await env.run_worker(worker)
    wid = await env.submit(nap_then_double("10m", backoff=3600))
    await env.wait(wid, "waiting", step="nap", timeout=10)
    await env.sleep(minutes=30)
    assert (await env.get(wid)).step("double").state == StepState.RETRYING
    assert seen == [1]
    await env.sleep(hours=1)
    assert (await env.get(wid)).state == WorkflowState.COMPLETED
    assert seen == [1, 2]


async def test_auto_skip_does_not_jump_past_a_running_task(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    worker = Worker(name="test-slow", stop_grace=0.5)

    @worker.task("app.slow")
    async def slow(ctx: TaskContext, data: dict[str, Any]) -> dict[str, bool]:
        await asyncio.sleep(0.5)  # real time: the clock must not skip meanwhile
        return {"done": True}

    await env.run_worker(worker)
    wid = await env.submit({"name": "slow", "steps": [
        {"id": "slow", "task": "app.slow", "timeout": 60}]})
    status = await env.wait(wid, timeout=20)
    # Had the clock jumped to the 60 s timeout while the task ran, the step would fail.
    assert status.state == WorkflowState.COMPLETED, status.error
    assert env.clock.skipped == timedelta()


@NO_SKIP
async def test_a_step_timeout_fires_when_time_passes_over_a_hung_task(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    worker = Worker(name="test-hung", stop_grace=0.5)
    started, cancelled = asyncio.Event(), asyncio.Event()

    @worker.task("app.hang")
    async def hang(ctx: TaskContext, data: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    await env.run_worker(worker)
    wid = await env.submit({"name": "hung", "steps": [
        {"id": "hang", "task": "app.hang", "timeout": 600}]})
    await asyncio.wait_for(started.wait(), 10)
    await env.sleep(minutes=11, settle=0.2)
    status = await env.wait(wid, "failed", timeout=10)
    assert status.step("hang").error is not None
    assert status.step("hang").error.code == "step-timeout"
    await asyncio.wait_for(cancelled.wait(), 10)  # the worker was told to stop


async def test_signals_wait_for_a_state_and_events(natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    wid = await env.submit({"name": "approval", "steps": [
        {"id": "approve", "kind": "wait", "signal": "approved"},
        {"id": "echo", "kind": "transform", "depends_on": ["approve"],
         "output": "${steps.approve.output.by}"}]})
    await env.wait(wid, "waiting", step="approve", timeout=10)
    await env.signal(wid, "approved", {"by": "ada"})
    status = await env.wait(wid, "completed", timeout=10)
    assert status.step("echo").output == "ada"
    events = await env.events(wid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == EventType.WORKFLOW_CREATED
    assert events[-1].type == EventType.WORKFLOW_COMPLETED
    assert sum(e.type in EVENT_TERMINAL for e in events) == 1


async def test_waiting_for_a_state_a_workflow_ended_without_fails_at_once(
        natsflow_env: WorkflowEnvironment) -> None:
    env = natsflow_env
    wid = await env.submit({"name": "bad", "steps": [
        {"id": "nap", "kind": "sleep", "duration": "${input.missing}"}]})
    with pytest.raises(WaitFailed, match="failed before it was workflow completed") as info:
        await env.wait(wid, "completed", timeout=10)
    assert info.value.status is not None and info.value.status.state == WorkflowState.FAILED


async def test_an_early_result_survives_a_clock_a_day_ahead(
        natsflow_env: WorkflowEnvironment) -> None:
    """A result that beats its dispatch is handed back until the dispatch lands; its age
    is real time, so skipped time does not make it look stale and drop it."""
    env = natsflow_env
    await env.clock.advance(timedelta(days=1))
    # The token the attempt will be dispatched with: the deployment's key gives it.
    token = env.orchestrator.engine_settings.token("early1", "a", 1)
    result = TaskSucceeded(workflow_id="early1", step_id="a", attempt=1, output={"v": 42},
                           token=token)
    js = env.nc.jetstream()
    await js.publish(env.settings.subjects.result("early1"),
                     result.model_dump_json().encode())
    handed_back = env.orchestrator.metrics.early_results
    for _ in range(200):
        if handed_back._value.get() >= 1:
            break
        await asyncio.sleep(0.02)
    assert handed_back._value.get() >= 1
    await env.submit({"name": "early", "id": "early1", "steps": [
        {"id": "a", "task": "nobody.serves.this"}]})
    status = await env.wait("early1", timeout=20)
    assert status.state == WorkflowState.COMPLETED, status.error
    assert status.step("a").output == {"v": 42}


async def test_the_programmatic_environment_starts_its_own_nats() -> None:
    provider = EmbeddedNatsProvider()
    async with WorkflowEnvironment.start(nats=provider, builtins=False) as env:
        assert provider.server is not None and env.settings.servers == [provider.server.url]
        wid = await env.submit({"name": "nap", "steps": [
            {"id": "nap", "kind": "sleep", "duration": "24h"}]})
        assert (await env.wait(wid, timeout=20)).state == WorkflowState.COMPLETED
    assert provider.server is None  # stopped with the environment


def test_nats_providers_are_chosen_by_name_or_url() -> None:
    assert isinstance(nats_provider("embedded"), EmbeddedNatsProvider)
    external = nats_provider("nats://127.0.0.1:1, nats://127.0.0.1:2")
    assert isinstance(external, ExternalNats)
    assert external.start() == ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
    assert "embedded" in NATS_PROVIDERS
    with pytest.raises(ValueError, match="unknown NATS provider"):
        nats_provider("nope")


# -- the pytest plugin, as a user's project sees it ------------------------------------

USER_TEST = '''
from pydantic import BaseModel

from natsflow.testing import WorkflowEnvironment
from natsflow.worker import TaskContext, TaskError, Worker


class ChargeIn(BaseModel):
    amount: int


async def test_billing(natsflow_env: WorkflowEnvironment) -> None:
    worker = Worker()
    tries = []

    @worker.task("billing.charge")
    async def charge(ctx: TaskContext, data: ChargeIn) -> dict:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise TaskError("gateway-down", "try later")
        return {"charged": data.amount}

    await natsflow_env.run_worker(worker)
    wid = await natsflow_env.submit({"name": "bill", "input": {"amount": 5}, "steps": [
        {"id": "wait-a-day", "kind": "sleep", "duration": "24h"},
        {"id": "charge", "task": "billing.charge", "depends_on": ["wait-a-day"],
         "input": {"amount": "${input.amount}"},
         "retry": {"max_attempts": 2, "initial_interval": 3600, "max_interval": 3600}}]})
    status = await natsflow_env.wait(wid, timeout=20)
    assert status.state == "completed"
    assert status.step("charge").output == {"charged": 5}
    assert tries == [1, 2]


async def test_client(natsflow_client, natsflow_env) -> None:
    assert natsflow_client is natsflow_env.client
    assert await natsflow_client.ping()
'''


def _user_project(pytester: pytest.Pytester, mode: str = "strict") -> None:
    pytester.makeini(f"[pytest]\nasyncio_mode = {mode}\n"
                     "asyncio_default_fixture_loop_scope = function\n"
                     "filterwarnings = error\n")


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_users_test_file_passes_with_the_plugin(pytester: pytest.Pytester,
                                                  mode: str) -> None:
    _user_project(pytester, mode)
    marks = "import pytest\npytestmark = pytest.mark.asyncio\n" if mode == "strict" else ""
    pytester.makepyfile(test_user=marks + USER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("provider", ["container", "container-cluster"])
def test_the_plugin_runs_nats_in_containers(pytester: pytest.Pytester, provider: str) -> None:
    require_docker()  # .ci/run starts an engine; without one this fails, saying why
    _user_project(pytester, "auto")
    pytester.makepyfile(test_user=USER_TEST + """

def test_servers(natsflow_nats_servers):
    assert len(natsflow_nats_servers) == """ + ("3" if provider == "container-cluster" else "1")
                        + "\n")
    result = pytester.runpytest_subprocess("--natsflow-nats", provider, timeout=180)
    result.assert_outcomes(passed=3)


def test_the_plugin_uses_a_running_server_given_by_url(pytester: pytest.Pytester,
                                                       nats_server: EmbeddedNats,
                                                       tmp_path: Path) -> None:
    _user_project(pytester, "auto")
    pytester.makepyfile(test_user=USER_TEST + f'''

def test_servers(natsflow_nats_servers):
    assert natsflow_nats_servers == ["{nats_server.url}"]
''')
    result = pytester.runpytest_subprocess("--natsflow-nats", nats_server.url, timeout=120)
    result.assert_outcomes(passed=3)
