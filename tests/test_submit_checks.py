"""What can be known before a run is refused when the workflow arrives, naming the field.

The pure tests hold the checks of :mod:`contracts.language.checks` and
:mod:`contracts.language.expr` to each step kind and field; the NATS tests show a create
refused as ``validation-failed`` over the API, and a number in an HTTP query converted at
run time (a real HTTP server).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cel
import pytest
import uvicorn
from nats.aio.client import Client
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contracts.builtins import HttpInput, PublishInput, RequestInput, as_text
from contracts.egress import LOOPBACK, EgressPolicy
from contracts.errors import ErrorInfo, InvalidGraph, ValidationFailed, validation_failed
from contracts.headers import ERROR_CODE_HEADER
from contracts.language.expr import FUNCTIONS, ExpressionError, check_expression
from contracts.models import EXPRESSION_VARIABLES, WorkflowConfig, WorkflowState
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from transport.connect import NatsSettings


def _config(*steps: dict[str, Any], **kw: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": "t", "steps": list(steps), **kw})


def _refusal(*steps: dict[str, Any], **kw: Any) -> ValidationFailed:
    """The validation-failed a config gets (each entry point turns pydantic's into it)."""
    with pytest.raises(ValidationError) as exc:
        _config(*steps, **kw)
    return validation_failed(exc.value)


# -- the functions natsflow's CEL has ----------------------------------------------------

#: One expression per function of FUNCTIONS that runs in the runtime as it is loaded.
_CALLS = {
    "bytes": 'bytes("a")', "contains": '"abc".contains("b")', "double": "double(1)",
    "duration": 'duration("1h")', "dyn": "dyn(1)", "endsWith": '"abc".endsWith("c")',
    "int": "int(1.5)", "matches": '"abc".matches("^a")', "size": "size([1])",
    "startsWith": '"abc".startsWith("a")', "string": "string(1)",
    "timestamp": 'timestamp("2026-01-01T00:00:00Z")', "type": "type(1)", "uint": "uint(1)",
    **{f: f'timestamp("2026-01-01T00:00:00Z").{f}()' for f in (
        "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear",
        "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds")},
}
#: Functions of other CEL implementations (cel-go, the package's opt-in extensions).
_ELSEWHERE = ["range", "max", "min", "sum", "bool", "split", "join", "lowerAscii",
              "upperAscii", "replace", "trim", "substring", "indexOf", "abs", "now"]


def test_the_known_functions_are_what_the_cel_runtime_has() -> None:
    assert set(_CALLS) == FUNCTIONS
    for name, text in _CALLS.items():
        assert name in cel.compile(text).functions()
        cel.evaluate(text, {})  # raises if the runtime lacks it
        check_expression(text, variables=EXPRESSION_VARIABLES)
    for name in _ELSEWHERE:
        with pytest.raises(RuntimeError, match="Undefined variable or function"):
            cel.evaluate(f"{name}([1, 2])", {})
        with pytest.raises(ExpressionError, match=f"unknown function.*{name}"):
            check_expression(f"{name}(input.x)", variables=EXPRESSION_VARIABLES)
    # Macros and operators are no functions.
    check_expression("has(input.a) && input.l.map(x, x * 2).filter(y, y > 1).size() > 0 "
                     "&& input.l.all(x, x in [1, 2]) && !input.l.exists_one(x, -x < 0)",
                     variables=EXPRESSION_VARIABLES)


# -- every expression field, with an unknown function -------------------------------------

_RANGE = "${range(input.n)}"
#: (steps, the field that must be named): every field of every kind that takes expressions.
_EVERY_FIELD = [
    ([{"id": "a", "task": "t", "when": "range(input.n) == 1"}], "steps.0.when"),
    ([{"id": "a", "task": "t", "input": {"n": _RANGE}}], "steps.0.input.n"),
    ([{"id": "a", "kind": "request", "subject": "s.${range(input.n)}"}], "steps.0.subject"),
    ([{"id": "a", "kind": "request", "subject": "s", "payload": [_RANGE]}],
     "steps.0.payload.0"),
    ([{"id": "a", "kind": "request", "subject": "s", "headers": {"X": _RANGE}}],
     "steps.0.headers.X"),
    ([{"id": "a", "kind": "http", "url": "http://h/${range(input.n)}"}], "steps.0.url"),
    ([{"id": "a", "kind": "http", "url": "http://h/", "headers": {"X": _RANGE}}],
     "steps.0.headers.X"),
    ([{"id": "a", "kind": "http", "url": "http://h/", "query": {"q": _RANGE}}],
     "steps.0.query.q"),
    ([{"id": "a", "kind": "http", "url": "http://h/", "body": {"b": _RANGE}}],
     "steps.0.body.b"),
    ([{"id": "a", "kind": "publish", "subject": "s.${range(input.n)}"}], "steps.0.subject"),
    ([{"id": "a", "kind": "publish", "subject": "s", "payload": _RANGE}], "steps.0.payload"),
    ([{"id": "a", "kind": "publish", "subject": "s", "headers": {"X": _RANGE}}],
     "steps.0.headers.X"),
    ([{"id": "a", "kind": "sleep", "duration": _RANGE}], "steps.0.duration"),
    ([{"id": "a", "kind": "sleep", "until": _RANGE}], "steps.0.until"),
    ([{"id": "a", "kind": "transform", "output": {"o": _RANGE}}], "steps.0.output.o"),
    ([{"id": "a", "kind": "switch", "value": "range(input.n)", "cases": {}}],
     "steps.0.value"),
    ([{"id": "a", "kind": "map", "items": "range(input.n)", "step": {"task": "t"}}],
     "steps.0.items"),
    ([{"id": "a", "kind": "map", "items": "input.l", "step": {"task": "t",
                                                              "input": {"i": _RANGE}}}],
     "steps.0.step.input.i"),
    ([{"id": "a", "kind": "map", "items": "input.l",
       "step": {"kind": "http", "url": "http://h/", "query": {"q": "${range(item)}"}}}],
     "steps.0.step.query.q"),
    ([{"id": "a", "kind": "workflow", "definition": "d", "input": {"i": _RANGE}}],
     "steps.0.input.i"),
]


@pytest.mark.parametrize(("steps", "field"), _EVERY_FIELD)
def test_an_unknown_function_is_refused_in_every_field(steps: list[dict[str, Any]],
                                                       field: str) -> None:
    err = _refusal({"id": "first", "task": "t"}, *steps)
    field = field.replace("steps.0", "steps.1")
    assert (err.code, err.field) == ("validation-failed", field)
    assert err.errors is not None and err.errors[0].loc == field
    assert "step 'a'" in err.errors[0].message and "range" in err.errors[0].message


def test_the_workflow_output_is_checked_too() -> None:
    err = _refusal({"id": "a", "task": "t"}, output={"o": _RANGE})
    assert err.field == "output.o" and "range" in err.message


# -- unknown names at the top level and below it -------------------------------------------

@pytest.mark.parametrize(("expr", "says"), [
    ("inputs.x", "unknown variable(s) inputs"),
    ("steps.a.outputs.x", "reads `outputs` of a step"),
    ('steps["a"].stat == "succeeded"', "reads `stat` of a step"),
    ("workflow.labels.x == workflow.title", "reads workflow.title"),
    ("index + 1", "unknown variable(s) index"),  # only inside a map's item step
])
def test_unknown_names_are_refused(expr: str, says: str) -> None:
    err = _refusal({"id": "a", "task": "t"},
                   {"id": "b", "task": "t", "depends_on": ["a"], "when": expr})
    assert err.field == "steps.1.when" and says in err.message and "step 'b'" in err.message


def test_known_names_pass() -> None:
    _config({"id": "a", "task": "t"},
            {"id": "b-c", "task": "t"},
            {"id": "d", "task": "t", "depends_on": ["a", "b-c"],
             "when": 'steps.a.state == "succeeded" && steps["b-c"].error == null '
                     '&& workflow.labels.x == workflow.id + workflow.name '
                     '&& steps.a.output.size() > 0 && input.l.exists(steps, steps > 1)',
             "input": {"s": "steps.a.bogus is only text", "e": "${steps.a.error.code}"}})


def test_a_step_that_does_not_exist_is_named_as_such() -> None:
    with pytest.raises(InvalidGraph, match="there is no step 'nosuch'") as exc:
        _config({"id": "a", "task": "t", "input": {"x": "${steps.nosuch.output}"}})
    assert exc.value.field == "steps.0.input"


# -- values known before the run ---------------------------------------------------------

_HTTP = {"id": "a", "kind": "http", "url": "https://h.example/x"}

_WRONG = [
    ({**_HTTP, "query": {"q": 5}}, "steps.0.query.q", "valid string"),
    ({**_HTTP, "query": {"q": "${[1, 2]}"}}, "steps.0.query.q", "valid string"),
    ({**_HTTP, "headers": {"X": "${null}"}}, "steps.0.headers.X", "valid string"),
    ({**_HTTP, "url": "ftp://h/${input.p}"}, "steps.0.url", "not an http:// or https://"),
    ({**_HTTP, "url": "${input.base}/a b"}, "steps.0.url", "whatever its expressions give"),
    ({**_HTTP, "url": "https:/h"}, "steps.0.url", "not an http"),
    ({**_HTTP, "expect": [200, 42]}, "steps.0.expect.1", "greater than or equal to 100"),
    ({**_HTTP, "request_timeout": 7200}, "steps.0.request_timeout", "less than or equal"),
    ({**_HTTP, "body": {"n": "${1 / 0}"}}, "steps.0.body.n", "division by zero"),
    ({"id": "a", "kind": "request", "subject": "orders..${input.x}"}, "steps.0.subject",
     "not a NATS subject"),
    ({"id": "a", "kind": "request", "subject": "a.*"}, "steps.0.subject",
     "not a NATS subject"),
    ({"id": "a", "kind": "request", "subject": "s", "request_timeout": 3601},
     "steps.0.request_timeout", "less than or equal"),
    ({"id": "a", "kind": "publish", "subject": "a b"}, "steps.0.subject", "NATS subject"),
    ({"id": "a", "kind": "sleep", "duration": "90"}, "steps.0.duration",
     "not a number of seconds or a duration"),
    ({"id": "a", "kind": "sleep", "duration": "soon"}, "steps.0.duration", "duration"),
    ({"id": "a", "kind": "sleep", "duration": -1}, "steps.0.duration", "duration"),
    ({"id": "a", "kind": "sleep", "duration": True}, "steps.0.duration", "not a boolean"),
    ({"id": "a", "kind": "sleep", "duration": "${duration('x')}"}, "steps.0.duration",
     "failed"),
    ({"id": "a", "kind": "sleep", "until": "tomorrow"}, "steps.0.until", "RFC 3339"),
    ({"id": "a", "kind": "sleep", "until": "2026-01-01T00:00:00"}, "steps.0.until",
     "no time zone"),
    ({"id": "a", "task": "t", "when": "1 + 1"}, "steps.0.when", "not a boolean"),
    ({"id": "a", "task": "t", "when": "1 + 1.5 > 2"}, "steps.0.when", "No such overload"),
    ({"id": "a", "task": "t", "input": {"n": "${int('x')}"}}, "steps.0.input.n", "failed"),
    ({"id": "a", "kind": "map", "items": "'abc'", "step": {"task": "t"}}, "steps.0.items",
     "not a list"),
    ({"id": "a", "kind": "map", "items": "input.l",
      "step": {"kind": "http", "url": "gopher://x/${item}"}}, "steps.0.step.url", "http"),
    ({"id": "a", "kind": "switch", "value": "1 / 0", "cases": {}}, "steps.0.value",
     "division by zero"),
    ({"id": "a", "kind": "transform", "output": "${[1][3]}"}, "steps.0.output", "failed"),
    ({"id": "a", "kind": "workflow", "definition": "a.>"}, "steps.0.definition", "pattern"),
]


@pytest.mark.parametrize(("step", "field", "says"), _WRONG)
def test_a_value_known_to_be_wrong_is_refused_naming_the_field(step: dict[str, Any],
                                                               field: str, says: str) -> None:
    err = _refusal(step)
    assert (err.code, err.field) == ("validation-failed", field)
    assert err.errors is not None and says in err.errors[0].message, err.errors


def test_every_wrong_value_is_named_at_once() -> None:
    err = _refusal({**_HTTP, "expect": [1], "query": {"q": "${[1]}"}},
                   {"id": "b", "kind": "sleep", "duration": "soon"})
    assert err.errors is not None
    assert {e.loc for e in err.errors} == {"steps.0.expect.0", "steps.0.query.q",
                                            "steps.1.duration"}


@pytest.mark.parametrize("step", [
    {**_HTTP, "url": "${input.base}/orders", "query": {"q": "${input.n}", "p": "2"},
     "headers": {"X-N": "${input.n}", "Authorization": "Bearer ${input.token}"},
     "expect": [200, 404], "request_timeout": 3600},
    {**_HTTP, "url": "http${input.s}://h/x"},  # the scheme may still come out right
    {**_HTTP, "url": "HTTPS://h/${input.p}?a=${1 + 1}"},
    {"id": "a", "kind": "request", "subject": "$SRV.PING.${input.name}"},
    {"id": "a", "kind": "request", "subject": "$S${input.rest}"},  # may be $SRV.x
    {"id": "a", "kind": "request", "subject": "${input.subject}"},
    {"id": "a", "kind": "publish", "subject": "orders.${input.region}.new",
     "payload": {"n": "${input.n}", "c": "${1 + 1}"}, "headers": {"X": "${'a' + 'b'}"}},
    {"id": "a", "kind": "sleep", "duration": "1h30m"},
    {"id": "a", "kind": "sleep", "duration": 0},
    {"id": "a", "kind": "sleep", "duration": "${input.wait}"},
    {"id": "a", "kind": "sleep", "duration": "${string(2) + 's'}"},
    {"id": "a", "kind": "sleep", "until": "2026-01-01T00:00:00Z"},
    {"id": "a", "kind": "sleep", "until": "${input.at}"},
    {"id": "a", "task": "t", "when": "true", "input": {"x": "$${not an expression}"}},
    {"id": "a", "kind": "map", "items": "[1, 2, 3]", "step": {"task": "t"}},
    {"id": "a", "kind": "workflow", "definition": "invoice-v2"},
])
def test_what_only_the_run_knows_is_left_to_it(step: dict[str, Any]) -> None:
    _config(step)


def test_stored_records_are_not_checked_again() -> None:
    # What natsflow stored itself is read back as it is (older records keep loading).
    from contracts.models import TRUSTED

    stored = {"name": "t", "steps": [{"id": "a", "task": "t", "when": "range(1) == 1"}]}
    WorkflowConfig.model_validate(stored, context={TRUSTED: True})


# -- conversions at run time ----------------------------------------------------------------

def test_numbers_and_booleans_become_text_in_queries_and_headers() -> None:
    assert [as_text(v) for v in (5, 1.5, True, False, "x", None)] == \
        ["5", "1.5", "true", "false", "x", None]
    http = HttpInput.model_validate({"url": "http://h/", "query": {"n": 5, "f": 2.5, "b": True},
                                     "headers": {"X-N": 7}})
    assert (http.query, http.headers) == ({"n": "5", "f": "2.5", "b": "true"}, {"X-N": "7"})
    for model in (RequestInput, PublishInput):
        assert model.model_validate({"subject": "s", "headers": {"X": False}}).headers == \
            {"X": "false"}
    for lossy in (None, [1], {"a": 1}):
        with pytest.raises(ValidationError, match=r"query\.q"):
            HttpInput.model_validate({"url": "http://h/", "query": {"q": lossy}})


# -- over NATS --------------------------------------------------------------------------

_UNKNOWN_FUNCTION = {"name": "bad", "input": {"n": 3}, "steps": [
    {"id": "fetch", "task": "demo.noop"},
    {"id": "call", "kind": "http", "url": "http://127.0.0.1:9/x", "depends_on": ["fetch"],
     "query": {"q": "${range(input.n)}"}}]}


async def test_create_of_an_unknown_function_is_refused_as_validation_failed(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings) -> None:
    with pytest.raises(ValidationFailed) as local:
        await client.create(_UNKNOWN_FUNCTION)
    assert local.value.field == "steps.1.query.q"
    # A publisher that is not our client is answered the same by the orchestrator.
    body = json.dumps({"config": _UNKNOWN_FUNCTION}).encode()
    msg = await nc.request(settings.subjects.api("workflow.create"), body, timeout=10)
    assert msg.headers and msg.headers.get(ERROR_CODE_HEADER) == "validation-failed"
    info = ErrorInfo.model_validate_json(msg.data)
    assert (info.code, info.field) == ("validation-failed", "config.steps.1.query.q")
    assert info.errors and info.errors[0].loc == "config.steps.1.query.q"
    assert "step 'call'" in info.message and "range" in info.message
    # So is a batch, whose template is checked as a workflow.
    batch = json.dumps({"workflow": {"name": "bad", "steps": _UNKNOWN_FUNCTION["steps"]},
                        "inputs": [{"n": 1}]}).encode()
    msg = await nc.request(settings.subjects.api("batch.create"), batch, timeout=10)
    info = ErrorInfo.model_validate_json(msg.data)
    assert (info.code, info.field) == ("validation-failed", "workflow.steps.1.query.q")


async def _echo(request: Request) -> Response:
    return JSONResponse({"query": dict(request.query_params),
                         "n": request.headers.get("x-n"), "on": request.headers.get("x-on")})


@pytest.fixture
async def web() -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/echo", _echo)]),
                                           host="127.0.0.1", port=port, lifespan="off",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


@pytest.fixture
async def loopback_engine(settings: NatsSettings) -> AsyncIterator[object]:
    """An orchestrator whose http steps may call this machine (the test server)."""
    from orchestrator import Orchestrator

    orch = Orchestrator(settings, stop_grace=2.0, egress=EgressPolicy.parse(LOOPBACK))
    await orch.start()
    yield orch
    await orch.stop()


async def test_numbers_in_an_http_query_and_headers_are_sent_as_text(
        loopback_engine: object, client: NatsflowClient, web: str) -> None:
    await client.create({
        "name": "numbers", "id": "numbers", "input": {"n": 5, "price": 9.5, "on": True},
        "steps": [{"id": "call", "kind": "http", "url": f"{web}/echo",
                   "query": {"q": "${input.n}", "price": "${input.price}",
                             "on": "${input.on}"},
                   "headers": {"X-N": "${input.n * 2}", "X-On": "${input.on}"}}]})
    status = (await client.wait("numbers", timeout=60)).status
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    assert status.step("call").output == {
        "query": {"q": "5", "price": "9.5", "on": "true"}, "n": "10", "on": "true"}


def test_an_upper_case_scheme_is_an_http_url() -> None:
    # The pattern's ignore-case flag once stayed behind in Python: pydantic refused these.
    assert HttpInput.model_validate({"url": "HTTPS://h.example/x"}).url == "HTTPS://h.example/x"
    _config({**_HTTP, "url": "Http://h.example/${input.p}"})


def test_the_docs_list_the_functions_there_are() -> None:
    text = (Path(__file__).parent.parent / "docs" / "expressions.md").read_text()
    section = text.split("## Functions", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([A-Za-z_]+)`", section.split("Functions of other CEL")[0]))
    macros = {"has", "all", "exists", "exists_one", "map", "filter", "in"}
    assert listed - macros == FUNCTIONS
