"""Prometheus metrics (orchestrator and gateway) and JSON logs, on the real nats-server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Probe, running_demo_worker, wait_for
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from contracts.models import WorkflowState
from gateway import create_app
from gateway._metrics import UNMATCHED_ROUTE, GatewayMetrics
from natsflow._logging import JsonFormatter, LogFormat, setup_logging
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.metrics import OrchestratorMetrics
from transport.connect import NatsSettings
from transport.streams import Topology, declare_stream, ensure_consumer

OPERATIONS_DOC = Path(__file__).parent.parent / "docs" / "operations.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def engine(settings: NatsSettings) -> AsyncIterator[Orchestrator]:
    """This module's orchestrator serves /metrics on a free port and samples queues often."""
    orch = Orchestrator(settings, stop_grace=2.0, metrics_port=0, metrics_host="127.0.0.1",
                        queue_sample_interval=0.1)
    await orch.start()
    yield orch
    await orch.stop()


def _parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _scrape(engine: Orchestrator) -> Samples:
    assert engine.metrics_server is not None
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{engine.metrics_server.port}/metrics")
    assert resp.status_code == 200
    return _parse(resp.text)


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _wait_scraped(engine: Orchestrator, name: str, value: float,
                        **labels: str) -> Samples:
    samples: Samples = {}

    async def scraped() -> bool:
        nonlocal samples
        samples = await _scrape(engine)
        return _value(samples, name, **labels) == value

    for _ in range(100):
        if await scraped():
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} never reached {value}: {_value(samples, name, **labels)}")


async def test_workflow_and_step_metrics_move_with_their_labels(
        demo_worker: Probe, engine: Orchestrator, client: NatsflowClient) -> None:
    ok = await client.create({"name": "ok", "steps": [
        {"id": "a", "task": "demo.noop"},
        {"id": "b", "kind": "transform", "output": "${ steps.a.output }",
         "depends_on": ["a"]}]})
    bad = await client.create({"name": "bad", "steps": [{"id": "boom", "task": "demo.fail"}]})
    for wid, state in ((ok.id, WorkflowState.COMPLETED), (bad.id, WorkflowState.FAILED)):
        status = (await client.wait(wid)).status
        assert status is not None and status.state == state

    samples = await _wait_scraped(engine, "natsflow_workflows_finished_total", 1.0,
                                  state="failed")
    assert _value(samples, "natsflow_workflows_started_total") == 2
    assert _value(samples, "natsflow_workflows_finished_total", state="completed") == 1
    assert _value(samples, "natsflow_workflows_finished_total", state="stopped") == 0
    attempts = "natsflow_step_attempts_finished_total"
    assert _value(samples, attempts, kind="task", task="demo.noop", outcome="succeeded") == 1
    assert _value(samples, attempts, kind="task", task="demo.fail", outcome="failed") == 1
    assert _value(samples, attempts, kind="transform", task="", outcome="succeeded") == 1
    duration = "natsflow_step_duration_seconds"
    for task in ("demo.noop", "demo.fail"):
        assert _value(samples, f"{duration}_count", kind="task", task=task) == 1
        assert _value(samples, f"{duration}_bucket", kind="task", task=task, le="+Inf") == 1
        assert _value(samples, f"{duration}_sum", kind="task", task=task) >= 0
    assert _value(samples, "natsflow_dead_letters_total", reason="invalid-submit") == 0
    # Both workflows finished, so neither is cached any more.
    assert ("natsflow_record_cache_records", frozenset({("entity", "wf")})) in samples


async def test_a_retried_step_counts_each_attempt_and_its_duration(
        demo_worker: Probe, engine: Orchestrator, client: NatsflowClient) -> None:
    wf = await client.create({"name": "flaky", "steps": [
        {"id": "f", "task": "demo.flaky", "input": {"fail_times": 2},
         "retry": {"max_attempts": 3, "initial_interval": 0.05, "backoff_coefficient": 1.0}}]})
    status = (await client.wait(wf.id)).status
    assert status is not None and status.state == WorkflowState.COMPLETED
    samples = await _wait_scraped(engine, "natsflow_workflows_finished_total", 1.0,
                                  state="completed")
    attempts = "natsflow_step_attempts_finished_total"
    assert _value(samples, attempts, kind="task", task="demo.flaky", outcome="retrying") == 2
    assert _value(samples, attempts, kind="task", task="demo.flaky", outcome="succeeded") == 1
    assert _value(samples, "natsflow_step_duration_seconds_count", kind="task",
                  task="demo.flaky") == 3


async def test_a_port_in_use_fails_the_start_at_once(settings: NatsSettings,
                                                     engine: Orchestrator) -> None:
    assert engine.metrics_server is not None
    taken = Orchestrator(settings, metrics_port=engine.metrics_server.port,
                         metrics_host="127.0.0.1")
    with pytest.raises(OSError):
        await taken.start()
    assert taken.nc is None  # it failed before connecting


async def test_a_malformed_submit_counts_as_a_dead_letter_by_reason(
        engine: Orchestrator, nc: Client, settings: NatsSettings) -> None:
    await nc.jetstream().publish(settings.subjects.submit, b"\xff not json")
    samples = await _wait_scraped(engine, "natsflow_dead_letters_total", 1.0,
                                  reason="invalid-submit")
    assert _value(samples, "natsflow_workflows_started_total") == 0


async def test_queue_depths_of_the_engine_and_the_task_queues_are_sampled(
        engine: Orchestrator, client: NatsflowClient, settings: NatsSettings) -> None:
    # No worker serves demo.noop yet: its task waits in the tasks stream, and once a
    # worker consumer exists it is that consumer's num_pending.
    s = settings.subjects
    wf = await client.create({"name": "queued", "steps": [{"id": "a", "task": "demo.noop"}]})
    samples = await _wait_scraped(engine, "natsflow_queue_pending", 0.0,
                                  stream=s.inbox_stream, consumer=s.engine_consumer)
    assert ("natsflow_queue_pending",
            frozenset({("stream", s.inbox_stream), ("consumer", s.timer_consumer)})) in samples
    async with running_demo_worker(settings):
        await client.wait(wf.id)
        await _wait_scraped(engine, "natsflow_queue_pending", 0.0, stream=s.tasks_stream,
                            consumer=s.worker_consumer("demo.noop"))


async def test_the_metrics_server_stops_with_the_orchestrator(settings: NatsSettings) -> None:
    orch = Orchestrator(settings, metrics_port=0, metrics_host="127.0.0.1",
                        queue_sample_interval=60.0)
    await orch.start()
    assert orch.metrics_server is not None
    port = orch.metrics_server.port
    assert "natsflow_workflows_started_total 0.0" in (
        await httpx.AsyncClient().get(f"http://127.0.0.1:{port}/metrics")).text
    await orch.stop()  # the sampler sleeps 60 s: stopping must not wait for it
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")


def test_two_orchestrators_in_one_process_count_apart() -> None:
    first, second = OrchestratorMetrics(), OrchestratorMetrics()
    first.workflows_started.inc()
    assert first.registry.get_sample_value("natsflow_workflows_started_total") == 1
    assert second.registry.get_sample_value("natsflow_workflows_started_total") == 0


# -- gateway ------------------------------------------------------------------------


async def test_the_gateway_counts_requests_by_route_template_and_status(
        engine: Orchestrator, settings: NatsSettings, nc: Client) -> None:
    app = create_app(settings, auth=None, nc=nc, request_timeout=2.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        assert (await http.get("/healthz")).status_code == 200
        for wid in ("nope-1", "nope-2"):
            assert (await http.get(f"/workflows/{wid}")).status_code in (404, 503)
        assert (await http.get("/no/such/path")).status_code == 404
        resp = await http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = _parse(resp.text)
    requests = "natsflow_gateway_requests_total"
    assert _value(samples, requests, method="GET", route="/healthz", status="200") == 1
    statuses = {dict(labels)["status"] for name, labels in samples
                if name == requests and dict(labels)["route"] == "/workflows/{workflow_id}"}
    assert statuses <= {"404", "503"}
    assert sum(v for (name, labels), v in samples.items()
               if name == requests and dict(labels)["route"] == "/workflows/{workflow_id}") == 2
    assert _value(samples, requests, method="GET", route=UNMATCHED_ROUTE, status="404") == 1
    assert _value(samples, "natsflow_gateway_request_duration_seconds_count", method="GET",
                  route="/healthz") == 1
    # Only the gateway's own metrics: nothing of the orchestrator's.
    assert not any(name.startswith(("natsflow_workflows", "natsflow_step"))
                   for name, _ in samples)
    assert "/metrics" not in json.dumps(app.openapi()["paths"])


# -- structured logs ----------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The orchestrator's log records, formatted as JSON lines into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("natsflow.orchestrator")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_json_log_lines_carry_the_workflow_id(
        json_log: io.StringIO, demo_worker: Probe, engine: Orchestrator,
        client: NatsflowClient) -> None:
    wf = await client.create({"name": "logged", "steps": [{"id": "a", "task": "demo.noop"}]})
    await client.wait(wf.id)
    await wait_for(lambda: wf.id in json_log.getvalue(), what="a log line about it")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = [line for line in lines if line.get("workflow_id") == wf.id]
    assert mine, lines
    assert mine[0]["message"] == f"workflow {wf.id} completed"
    assert mine[0]["level"] == "INFO"
    assert mine[0]["logger"] == "natsflow.orchestrator"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", mine[0]["time"])


def test_json_formatter_takes_context_from_extra_and_formats_exceptions() -> None:
    logger = logging.getLogger("natsflow.test-json")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "step %s: %s",
                               ("a", "late"), None,
                               extra={"workflow_id": "w1", "step_id": "a"})
    line = json.loads(JsonFormatter().format(record))
    assert line == {"time": line["time"], "level": "WARNING", "logger": "natsflow.test-json",
                    "message": "step a: late", "workflow_id": "w1", "step_id": "a"}
    try:
        raise ValueError("bad")
    except ValueError:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "oops", (),
                                   sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in line["exception"]
    assert "workflow_id" not in line


def test_setup_logging_installs_one_handler_of_the_chosen_format() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        setup_logging(LogFormat.JSON)
        assert [type(h.formatter) for h in root.handlers] == [JsonFormatter]
        setup_logging("text")
        assert len(root.handlers) == 1
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


# -- docs ---------------------------------------------------------------------------


def test_the_operations_doc_lists_exactly_the_registered_metrics() -> None:
    text = OPERATIONS_DOC.read_text()
    documented = set(re.findall(r"^\| `(natsflow_\w+)`", text, flags=re.M))
    registered = set(OrchestratorMetrics().names()) | set(GatewayMetrics().names())
    assert documented == registered


def test_the_services_take_the_log_format_from_the_environment() -> None:
    from typer.testing import CliRunner

    from natsflow.cli import app

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        done = CliRunner().invoke(app, ["worker", "no_such_module_here:worker"],
                                  env={"NATSFLOW_LOG_FORMAT": "json"})
        assert done.exit_code == 2, done.output
        assert [type(h.formatter) for h in root.handlers] == [JsonFormatter]
        done = CliRunner().invoke(app, ["worker", "no_such_module_here:worker",
                                        "--log-format", "yaml"])
        assert done.exit_code == 2  # not a choice
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


async def test_a_redelivered_command_counts_as_a_redelivery(
        settings: NatsSettings, nc: Client, client: NatsflowClient) -> None:
    s = settings.subjects
    # Declared, not consumed: a stopped orchestrator's last pull could take the message.
    js, topology = nc.jetstream(), Topology(s)
    await declare_stream(js, topology.inbox())
    await ensure_consumer(js, s.inbox_stream, topology.engine_consumer())
    await client.submit({"id": "again", "name": "again",
                         "steps": [{"id": "t", "kind": "transform", "output": "1"}]})
    # Take the submit off the engine consumer and hand it back: its next delivery is #2.
    sub = await nc.jetstream().pull_subscribe_bind(s.engine_consumer, stream=s.inbox_stream)
    [msg] = await sub.fetch(1, timeout=5.0)
    await msg.nak()
    orch = Orchestrator(settings, builtins=False, metrics_port=0, metrics_host="127.0.0.1")
    async with orch:
        status = (await client.wait("again")).status
        assert status is not None and status.state == WorkflowState.COMPLETED
        samples = await _scrape(orch)
    assert _value(samples, "natsflow_inbox_redeliveries_total") == 1
    assert _value(samples, "natsflow_workflows_started_total") == 1
