"""One home per wire fact: header names in contracts/headers.py, API operations in
contracts/operations.py, and everything that speaks the API built from that table."""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

import contracts
import contracts.headers
import contracts.operations
from contracts.errors import NatsflowError, WorkflowNotFound
from contracts.headers import ERROR_CODE_HEADER, ERROR_HEADER, HEADERS
from contracts.operations import OPERATIONS, Server, endpoints, error_reply, reply_error
from contracts.subjects import Subjects
from natsflow.asyncapi import asyncapi_schema
from natsflow.client import NatsflowClient
from natsflow.schedule_client import ScheduleClient
from natsflow.trigger_client import TriggerClient
from orchestrator.index import IndexService
from transport.connect import NatsSettings

ROOT = Path(__file__).resolve().parent.parent
#: Where natsflow's code lives (tests may spell the wire out: they assert it).
SOURCES = ("contracts", "orchestrator", "gateway", "natsflow", "bench")
HEADER_HOME = Path(inspect.getfile(contracts.headers)).resolve()
OPERATION_HOME = Path(inspect.getfile(contracts.operations)).resolve()
#: Every spelling of an operation: its name and its micro service endpoint name.
OPERATION_SPELLINGS = frozenset({op.name for op in OPERATIONS.values()}
                                | {op.endpoint for op in OPERATIONS.values()})


def _field_names(tree: ast.AST) -> set[int]:
    """ids of the string constants naming a model's fields in ``@field_validator(...)``
    (TraceContext's ``traceparent`` field is named as its header is, but is no header)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "field_validator"):
            out |= {id(arg) for arg in node.args}
    return out


def literals(source: str, wanted: frozenset[str]) -> list[tuple[int, str]]:
    """The string literals of ``source`` (line, value) that are exactly one of ``wanted``."""
    tree = ast.parse(source)
    skip = _field_names(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in wanted and id(node) not in skip]


def _spelled_outside(home: Path, wanted: frozenset[str]) -> list[str]:
    found = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.resolve() == home:
                continue
            for line, value in literals(path.read_text(), wanted):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    return found


# -- the rule, kept ------------------------------------------------------------------------


def test_the_scan_finds_a_literal_and_ignores_prose_and_field_names() -> None:
    source = '''
"""A docstring that mentions Nats-Msg-Id and workflow.create."""
headers = {"Nats-Msg-Id": "x"}
subject = api("workflow.create")
@field_validator("traceparent")
def check(value): ...
'''
    assert literals(source, HEADERS) == [(3, "Nats-Msg-Id")]
    assert literals(source, OPERATION_SPELLINGS) == [(4, "workflow.create")]


def test_no_header_name_is_written_outside_contracts_headers() -> None:
    assert _spelled_outside(HEADER_HOME, HEADERS) == []


def test_no_operation_name_is_written_outside_contracts_operations() -> None:
    assert _spelled_outside(OPERATION_HOME, OPERATION_SPELLINGS) == []


def test_headers_lists_every_header_constant() -> None:
    constants = {name: getattr(contracts.headers, name) for name in contracts.headers.__all__
                 if name != "HEADERS"}
    assert set(constants.values()) == HEADERS
    assert len(set(constants.values())) == len(constants)  # no name twice


def test_one_version_the_installed_one() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert contracts.__version__ == pyproject["project"]["version"]
    assert asyncapi_schema()["info"]["version"] == contracts.__version__
    found = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}:{line}"
                      for line, _ in literals(path.read_text(),
                                              frozenset({contracts.__version__}))]
    assert found == []


# -- the table ----------------------------------------------------------------------------


def test_the_table_is_keyed_by_name_and_each_service_gets_its_own() -> None:
    assert all(name == op.name for name, op in OPERATIONS.items())
    assert {op.server for op in OPERATIONS.values()} == set(Server)
    s = Subjects()
    for op in OPERATIONS.values():
        assert s.api_service(op.name) == op.service_name(s)
        assert op.reply in op.replies
        assert "natsflow-error" in op.error_codes


def test_endpoints_refuses_handlers_that_do_not_match_the_table() -> None:
    index = [op for op in OPERATIONS.values() if op.server is Server.INDEX]
    assert [op for op, _ in endpoints(Server.INDEX, {op: None for op in index})] == index
    try:
        endpoints(Server.INDEX, {index[0]: None})
    except RuntimeError as exc:
        assert index[1].name in str(exc)
    else:
        raise AssertionError("a missing handler was not refused")
    orchestrator = next(op for op in OPERATIONS.values() if op.server is Server.ORCHESTRATOR)
    try:
        endpoints(Server.INDEX, {**{op: None for op in index}, orchestrator: None})
    except RuntimeError as exc:
        assert orchestrator.name in str(exc)
    else:
        raise AssertionError("a handler of another service was not refused")


def test_an_error_reply_reads_back_as_the_error() -> None:
    body, headers = error_reply(WorkflowNotFound("no workflow 'x'", field="id"))
    assert headers == {ERROR_CODE_HEADER: "workflow-not-found",
                       ERROR_HEADER: "no workflow 'x'"}
    err = reply_error(body, headers)
    assert isinstance(err, WorkflowNotFound) and err.field == "id"
    assert reply_error(b'{"id": "x"}', {}) is None
    # A body that is no ErrorInfo still fails with the code the header gives.
    odd = reply_error(b"oops", {ERROR_CODE_HEADER: "workflow-not-found"})
    assert isinstance(odd, WorkflowNotFound)


# -- client, services and document: one set ----------------------------------------------

#: Client methods that are no API operation (liveness, the events stream, submit).
_NOT_API = {"ping", "watch", "events", "event_feed", "require_events_stream", "wait", "submit",
            "aclose"}


async def _every_api_method(client: NatsflowClient) -> set[str]:
    """Call every API method of the client once (answers do not matter); their names."""
    calls: dict[str, Any] = {
        "create": lambda: client.create({"steps": [{"id": "a", "task": "demo.echo"}]}),
        "run": lambda: client.run("nope"),
        "put_definition": lambda: client.put_definition(
            "d", {"steps": [{"id": "a", "task": "demo.echo"}]}),
        "get_definition": lambda: client.get_definition("d"),
        "get_definition_version": lambda: client.get_definition_version("d", 1),
        "list_definitions": lambda: client.list_definitions(),
        "start": lambda: client.start("nope"),
        "get": lambda: client.get("nope"),
        "stop": lambda: client.stop("nope"),
        "list_workflows": lambda: client.list_workflows(),
        "bulk": lambda: client.bulk("stop", dry_run=True, all_workflows=True),
        "pause": lambda: client.pause("nope"),
        "resume": lambda: client.resume("nope"),
        "retry": lambda: client.retry("nope"),
        "rerun": lambda: client.rerun("nope"),
        "signal": lambda: client.signal("nope", "go"),
        "create_batch": lambda: client.create_batch(
            {"workflow": {"name": "b", "steps": [{"id": "a", "task": "demo.echo"}]},
             "inputs": [{}]}),
        "get_batch": lambda: client.get_batch("nope"),
        "stop_batch": lambda: client.stop_batch("nope"),
        "list_limits": lambda: client.list_limits(),
    }
    public = {name for name, fn in inspect.getmembers(NatsflowClient, inspect.isfunction)
              if not name.startswith("_")}
    # A new client method is either an API call (then listed above) or said not to be.
    assert public - _NOT_API == set(calls)
    for call in calls.values():
        with contextlib.suppress(NatsflowError):
            await call()
    return set(calls)


async def _every_schedule_method(schedules: ScheduleClient) -> None:
    """Call every schedule operation once (through the schedule client)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "create": lambda: schedules.create({"name": "s", "workflow": {"definition": "nope"},
                                            "spec": {"every": 60}}),
        "get": lambda: schedules.get("nope"),
        "list": lambda: schedules.list(),
        "pause": lambda: schedules.pause("nope"),
        "unpause": lambda: schedules.unpause("nope"),
        "trigger": lambda: schedules.trigger("nope"),
        "backfill": lambda: schedules.backfill("nope", start, start),
        "delete": lambda: schedules.delete("nope"),
    }
    public = {name for name, fn in inspect.getmembers(ScheduleClient, inspect.isfunction)
              if not name.startswith("_")}
    assert public == set(calls)
    for call in calls.values():
        with contextlib.suppress(NatsflowError):
            await call()


async def _every_trigger_method(client: TriggerClient) -> None:
    """Each trigger call of the client (a subclass: its own module), once."""
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "create_trigger": lambda: client.create_trigger(
            {"name": "nope", "subject": "a.b", "definition": "nope", "id": "x"}),
        "get_trigger": lambda: client.get_trigger("nope"),
        "trigger_stats": lambda: client.trigger_stats("nope"),
        "list_triggers": lambda: client.list_triggers(),
        "pause_trigger": lambda: client.pause_trigger("nope"),
        "resume_trigger": lambda: client.resume_trigger("nope"),
        "delete_trigger": lambda: client.delete_trigger("nope"),
    }
    own = {name for name, fn in inspect.getmembers(TriggerClient, inspect.isfunction)
           if not name.startswith("_")} - {
        name for name, fn in inspect.getmembers(NatsflowClient, inspect.isfunction)}
    assert own - {"of"} == set(calls)
    for call in calls.values():
        with contextlib.suppress(NatsflowError):
            await call()


async def test_client_services_and_document_have_the_same_operations(
        engine: object, nc: Client, settings: NatsSettings) -> None:
    s = settings.subjects
    index = IndexService(settings, nc=nc)
    await index.start()
    asked: set[str] = set()

    async def overhear(msg: Msg) -> None:
        asked.add(msg.subject[len(s.api("")):])

    spy = await nc.subscribe(s.api(">"), cb=overhear)
    try:
        client = NatsflowClient(nc, s, timeout=5)
        await _every_api_method(client)
        await _every_schedule_method(ScheduleClient(client))
        await _every_trigger_method(TriggerClient.of(client))
        await nc.flush()
        served: dict[str, str] = {}
        for service in (s.service_name, s.index_service_name):
            info = json.loads((await nc.request(f"$SRV.INFO.{service}", b"",
                                                timeout=5)).data)
            for endpoint in info["endpoints"]:
                served[endpoint["subject"][len(s.api("")):]] = service
                assert endpoint["name"] == OPERATIONS[endpoint["subject"][len(s.api("")):]
                                                      ].endpoint
    finally:
        await spy.unsubscribe()
        await index.stop()
    documented = {c["address"][len(s.api("")):]
                  for c in asyncapi_schema(s)["channels"].values()
                  if c["address"] and c["address"].startswith(s.api(""))}
    assert asked == set(OPERATIONS)
    assert served == {name: op.service_name(s) for name, op in OPERATIONS.items()}
    assert documented == set(OPERATIONS)
