"""Webhooks: the pure parts (which events go where, retries, signatures), then delivery
through a real orchestrator on a real nats-server to a real HTTP receiver (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from helpers import read_dead_letters, read_events, running_demo_worker, wait_for
from nats.aio.client import Client
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from contracts.egress import LOOPBACK, EgressPolicy
from contracts.errors import ErrorInfo, ValidationFailed, error_from_info
from contracts.models import (
    EVENT_TERMINAL,
    Event,
    EventType,
    TaskStep,
    Webhook,
    WorkflowConfig,
)
from contracts.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDelivery,
    deliveries_for,
    derive_secret,
    sign,
    verify_signature,
    wants,
)
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from orchestrator import Orchestrator
from orchestrator.engine import decide
from orchestrator.records import CreateWorkflow, Effect, EventEffect, WebhookEffect
from orchestrator.runtime import fingerprint
from orchestrator.webhooks import (
    Action,
    Attempt,
    WebhookSettings,
    retry_delay,
    settlement,
)
from transport.connect import NatsSettings

SECRET = "whsec-test"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _event(type_: EventType, seq: int = 1) -> Event:
    return Event(workflow_id="wf1", seq=seq, type=type_, time=NOW)


def _config(*hooks: dict[str, Any], steps: int = 2, wid: str = "wf1") -> WorkflowConfig:
    chain = [{"id": f"s{i}", "kind": "transform", "output": {"n": i},
              **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(steps)]
    return WorkflowConfig.model_validate({"name": "hooked", "id": wid, "steps": chain,
                                          "webhooks": list(hooks)})


# -- which events go where (pure) ---------------------------------------------------------


@pytest.mark.parametrize("type_", list(EventType))
def test_terminal_webhooks_want_only_terminal_events_and_all_wants_everything(
        type_: EventType) -> None:
    event = _event(type_)
    assert wants(Webhook(url="https://a.example/h"), event) == (type_ in EVENT_TERMINAL)  # type: ignore[arg-type]
    assert wants(Webhook(url="https://a.example/h", events="all"), event)  # type: ignore[arg-type]


def test_deliveries_keep_the_webhooks_index_and_url() -> None:
    hooks = _config({"url": "https://a.example/h"}, {"url": "http://b.example:8080/x?k=1",
                                                     "events": "all"}).webhooks
    assert [(d.index, d.url) for d in deliveries_for(hooks, _event(EventType.STEP_STARTED))] \
        == [(1, "http://b.example:8080/x?k=1")]
    done = deliveries_for(hooks, _event(EventType.WORKFLOW_FAILED, 7))
    assert [(d.index, d.event.seq) for d in done] == [(0, 7), (1, 7)]


def test_the_engine_queues_a_delivery_after_each_event_a_webhook_wants() -> None:
    config = _config({"url": "https://a.example/t"}, {"url": "https://a.example/all",
                                                      "events": "all"})
    decision = decide(None, CreateWorkflow(config=config, fingerprint=fingerprint(config)),
                      NOW)
    effects = decision.effects
    events = [e.event for e in effects if isinstance(e, EventEffect)]
    assert events[-1].type == EventType.WORKFLOW_COMPLETED  # transforms run in the engine
    hooks = [e.delivery for e in effects if isinstance(e, WebhookEffect)]
    assert [(d.index, d.event) for d in hooks if d.index == 1] == [(1, e) for e in events]
    assert [(d.index, d.event) for d in hooks if d.index == 0] == [(0, events[-1])]
    # Each delivery comes right after its event, so a queue keeps the events' order.
    kinds = [e.kind for e in effects if e.kind in ("event", "webhook")]
    assert kinds[:3] == ["event", "webhook", "event"]
    assert decision.record is not None and decision.record.outbox == effects


def test_a_workflow_without_webhooks_queues_no_delivery_and_keeps_its_fingerprint() -> None:
    config = _config()
    decision = decide(None, CreateWorkflow(config=config, fingerprint=fingerprint(config)),
                      NOW)
    assert not any(isinstance(e, WebhookEffect) for e in decision.effects)
    assert "webhooks" not in config.model_dump_json()


@pytest.mark.parametrize(("hooks", "loc"), [
    ([{"url": "ftp://a.example/h"}], "webhooks.0.url"),
    ([{"url": "not a url"}], "webhooks.0.url"),
    ([{"url": "https://a.example/" + "x" * 2100}], "webhooks.0.url"),
    ([{"url": "https://a.example/h", "events": "some"}], "webhooks.0.events"),
    ([{"url": "https://a.example/h", "secret": "x"}], "webhooks.0.secret"),
    ([{"url": f"https://a.example/{i}"} for i in range(6)], "webhooks"),
])
def test_bad_webhooks_are_refused_naming_the_field(hooks: list[dict[str, Any]],
                                                   loc: str) -> None:
    with pytest.raises(ValidationError) as err:
        _config(*hooks)
    assert [".".join(str(p) for p in e["loc"]) for e in err.value.errors()] == [loc]


# -- retries (pure) -----------------------------------------------------------------------

_FAST = WebhookSettings(backoff=1.0, max_backoff=10.0, max_deliveries=4)


def test_retry_delays_double_up_to_the_bound_and_honour_retry_after() -> None:
    assert [retry_delay(n, _FAST) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry_delay(1, _FAST, retry_after=5.0) == 5.0
    assert retry_delay(3, _FAST, retry_after=1.0) == 4.0
    assert retry_delay(1, _FAST, retry_after=3600.0) == 10.0


@pytest.mark.parametrize(("attempt", "action", "code"), [
    (Attempt(status=200), Action.ACK, None),
    (Attempt(status=204), Action.ACK, None),
    (Attempt(status=503), Action.RETRY, None),
    (Attempt(status=500), Action.RETRY, None),
    (Attempt(status=429), Action.RETRY, None),
    (Attempt(status=408), Action.RETRY, None),
    (Attempt(error="no response within 10s"), Action.RETRY, None),
    (Attempt(error="ConnectError: refused"), Action.RETRY, None),
    (Attempt(status=400, excerpt="bad"), Action.DEAD, "webhook-rejected"),
    (Attempt(status=404), Action.DEAD, "webhook-rejected"),
    (Attempt(status=301), Action.DEAD, "webhook-rejected"),
    (Attempt(error="invalid URL", retryable=False), Action.DEAD, "webhook-rejected"),
])
def test_settlement_of_one_attempt(attempt: Attempt, action: Action, code: str | None) -> None:
    got = settlement(attempt, deliveries=1, settings=_FAST, where="POST https://a.example/h")
    assert got.action is action
    assert (got.reason.code if got.reason else None) == code
    if action is Action.RETRY:
        assert got.delay == 1.0
    if got.reason is not None:
        assert got.reason.message.startswith("POST https://a.example/h")


def test_a_retryable_failure_on_the_last_delivery_is_a_dead_letter_naming_the_cause() -> None:
    got = settlement(Attempt(status=503, excerpt="down"), deliveries=4, settings=_FAST,
                     where="POST https://a.example/h")
    assert got.action is Action.DEAD and got.reason is not None
    assert got.reason.code == "webhook-undeliverable"
    assert got.reason.message == ("gave up after 4 deliveries: POST https://a.example/h "
                                  "answered 503: down")
    assert got.reason.details == {"deliveries": 4, "status": 503, "body": "down"}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        WebhookSettings(max_deliveries=0)
    with pytest.raises(ValueError):
        WebhookSettings(backoff=5.0, max_backoff=1.0)
    with pytest.raises(ValueError):
        WebhookSettings(timeout=600.0)


# -- signatures (pure) --------------------------------------------------------------------


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    body, ts = b'{"seq":1}', str(int(time.time()))
    header = sign(SECRET, ts, body)
    assert header.startswith("v1=") and len(header) == 3 + 64
    assert verify_signature(SECRET, ts, body, header)
    assert verify_signature(SECRET, ts, body, f"v1=00, {header}")  # a rotated list
    assert not verify_signature("other", ts, body, header)
    assert not verify_signature(SECRET, ts, body + b" ", header)
    assert not verify_signature(SECRET, str(int(ts) + 1), body, header)
    assert not verify_signature(SECRET, ts, body, header.replace("v1=", "v0="))
    assert not verify_signature(SECRET, "soon", body, header)


def test_an_old_timestamp_is_refused_unless_the_check_is_off() -> None:
    body, ts = b"{}", "1700000000"
    header = sign(SECRET, ts, body)
    assert not verify_signature(SECRET, ts, body, header)
    assert verify_signature(SECRET, ts, body, header, now=1700000100)
    assert verify_signature(SECRET, ts, body, header, tolerance=None)


# -- delivery on a real nats-server to a real HTTP receiver ------------------------------


@dataclass
class Receiver:
    """What the test HTTP server was sent, and how it answers."""

    base: str = ""
    got: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    fail_first: int = 2  # /flaky answers 503 this many times per event

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got.get(path, [])]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A uvicorn server recording each POST: /ok (204), /flaky (503, 503, then 200),
    /bad (400)."""
    rec = Receiver()

    async def hook(request: Request) -> Response:
        path = request.url.path
        calls = rec.got.setdefault(path, [])
        calls.append((dict(request.headers), await request.body()))
        if path == "/bad":
            return PlainTextResponse("no such order", status_code=400)
        if path == "/flaky":
            event_id = request.headers[EVENT_ID_HEADER]
            tries = sum(1 for h, _ in calls if h[EVENT_ID_HEADER.lower()] == event_id)
            if tries <= rec.fail_first:
                return PlainTextResponse("busy", status_code=503)
        return Response(status_code=204)

    async with _serving(Starlette(routes=[Route("/{name}", hook, methods=["POST"])])) as base:
        rec.base = base
        yield rec


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


#: Small backoffs keep the retry tests fast.
FAST = WebhookSettings(secret=SECRET, backoff=0.05, max_backoff=0.2, max_deliveries=3,
                       timeout=2.0)


@pytest.fixture
async def hooked(settings: NatsSettings) -> AsyncIterator[Orchestrator]:
    """An orchestrator delivering webhooks with a secret and fast retries, to receivers
    on this machine (loopback opened)."""
    orch = Orchestrator(settings, stop_grace=2.0, builtins=False, webhook_settings=FAST,
                        egress=EgressPolicy.parse(LOOPBACK))
    await orch.start()
    yield orch
    await orch.stop()


def _check_signed(headers: dict[str, str], body: bytes, url: str) -> None:
    """Signed with the receiver's own secret: derived from the deployment's and its URL."""
    assert headers["content-type"] == "application/json"
    assert verify_signature(derive_secret(SECRET, url), headers[TIMESTAMP_HEADER.lower()],
                            body, headers[SIGNATURE_HEADER.lower()])


def _delivered(hooked: Orchestrator, outcome: str) -> float:
    value = hooked.metrics.registry.get_sample_value(
        "natsflow_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


async def test_a_terminal_webhook_gets_exactly_the_terminal_event_signed(
        hooked: Orchestrator, client: NatsflowClient, nc: Client, settings: NatsSettings,
        receiver: Receiver) -> None:
    await client.create(_config({"url": f"{receiver.base}/ok"}, wid="wh_t"))
    await client.wait("wh_t", timeout=20)
    await wait_for(lambda: bool(receiver.got.get("/ok")), what="the webhook")
    await asyncio.sleep(0.3)  # nothing else may follow
    ((headers, body),) = receiver.got["/ok"]
    _check_signed(headers, body, f"{receiver.base}/ok")
    event = Event.model_validate_json(body)
    assert event.type == EventType.WORKFLOW_COMPLETED
    assert headers[EVENT_ID_HEADER.lower()] == f"wh_t:{event.seq}"
    # Byte for byte what the events stream carries.
    stored = await nc.jetstream().get_last_msg(settings.subjects.events_stream,
                                               settings.subjects.event("wh_t",
                                                                       event.type.value))
    assert stored.data == body
    assert _delivered(hooked, "delivered") == 1


async def test_an_all_webhook_gets_every_event_in_order(
        hooked: Orchestrator, client: NatsflowClient, nc: Client, settings: NatsSettings,
        receiver: Receiver) -> None:
    await client.create(_config({"url": f"{receiver.base}/ok", "events": "all"}, steps=4,
                                wid="wh_all"))
    await client.wait("wh_all", timeout=20)
    events = await read_events(nc, settings.subjects, "wh_all")
    await wait_for(lambda: len(receiver.got.get("/ok", [])) >= len(events),
                   what="every event")
    seen: dict[str, dict[str, Any]] = {}
    for headers, body in receiver.got["/ok"]:
        _check_signed(headers, body, f"{receiver.base}/ok")
        seen.setdefault(headers[EVENT_ID_HEADER.lower()], json.loads(body))
    assert [e["seq"] for e in seen.values()] == [e.seq for e in events]
    assert [e["type"] for e in seen.values()] == [e.type.value for e in events]
    assert list(seen.values())[-1]["type"] == "workflow.completed"


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_try(
        hooked: Orchestrator, client: NatsflowClient, receiver: Receiver) -> None:
    await client.create(_config({"url": f"{receiver.base}/flaky"}, wid="wh_flaky"))
    await wait_for(lambda: len(receiver.got.get("/flaky", [])) >= 3, what="three tries")
    await asyncio.sleep(0.5)  # no fourth
    calls = receiver.got["/flaky"]
    assert len(calls) == 3
    assert len({h[EVENT_ID_HEADER.lower()] for h, _ in calls}) == 1
    for headers, body in calls:
        _check_signed(headers, body, f"{receiver.base}/flaky")
    assert Event.model_validate_json(calls[-1][1]).type == EventType.WORKFLOW_COMPLETED
    assert (_delivered(hooked, "retried"), _delivered(hooked, "delivered")) == (2, 1)


async def test_a_rejecting_receiver_leads_to_a_dead_letter_at_once(
        hooked: Orchestrator, client: NatsflowClient, nc: Client, settings: NatsSettings,
        receiver: Receiver) -> None:
    await client.create(_config({"url": f"{receiver.base}/bad?token=s3cret"}, wid="wh_bad"))
    ((subject, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
    assert subject == settings.subjects.dlq("webhook-rejected")
    assert letter.reason.code == "webhook-rejected"
    assert letter.reason.message == (f"POST {receiver.base}/bad answered 400: no such order")
    assert "s3cret" not in letter.reason.message
    assert letter.deliveries == 1
    delivery = WebhookDelivery.model_validate_json(letter.data)
    assert delivery.event.workflow_id == "wh_bad"
    assert delivery.event.type == EventType.WORKFLOW_COMPLETED
    assert len(receiver.got["/bad"]) == 1
    assert _delivered(hooked, "dead-lettered") == 1


async def test_an_unreachable_receiver_is_dead_lettered_after_max_deliveries(
        hooked: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    url = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens
    await client.create(_config({"url": url}, wid="wh_gone"))
    ((subject, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
    assert subject == settings.subjects.dlq("webhook-undeliverable")
    assert letter.reason.code == "webhook-undeliverable"
    assert letter.reason.message.startswith(f"gave up after 3 deliveries: POST {url}: ")
    assert letter.deliveries == FAST.max_deliveries
    assert _delivered(hooked, "retried") == FAST.max_deliveries - 1


async def test_a_replayed_outbox_queues_each_delivery_once(
        hooked: Orchestrator, client: NatsflowClient, nc: Client, settings: NatsSettings,
        receiver: Receiver) -> None:
    processor = hooked.processor
    assert processor is not None
    real = processor.outbox.send_all
    crashes: list[int] = []

    async def send_all(key: str, effects: Sequence[Effect], trace: Any,
                       routed: Any = None) -> list[Any]:
        acks = await real(key, effects, trace, routed)
        if not crashes and any(isinstance(e, WebhookEffect) for e in effects):
            # Published, but "crashed" before the ack: the redelivered command finds the
            # outbox in the record and publishes all of it again.
            await asyncio.gather(*acks)
            crashes.append(len(effects))
            raise ConnectionError("simulated crash after the publish")
        return acks

    processor.outbox.send_all = send_all  # type: ignore[method-assign]
    config = _config({"url": f"{receiver.base}/ok", "events": "all"}, wid="wh_replay")
    config = config.model_copy(update={"steps": [
        TaskStep(id="a", task="demo.echo", input={"text": "x"})]})
    async with running_demo_worker(settings):
        await client.create(config)
        await client.wait("wh_replay", timeout=20)
        events = await read_events(nc, settings.subjects, "wh_replay")
        await wait_for(lambda: len(receiver.got.get("/ok", [])) >= len(events),
                       what="every event")
        await asyncio.sleep(0.5)  # time for a duplicate to show up
    assert crashes
    ids = [h[EVENT_ID_HEADER.lower()] for h, _ in receiver.got["/ok"]]
    assert sorted(ids) == sorted(f"wh_replay:{e.seq}" for e in events)


async def test_a_bad_webhook_url_is_refused_at_submit_naming_the_field(
        hooked: Orchestrator, nc: Client, settings: NatsSettings) -> None:
    config = _config(wid="wh_url").model_dump(mode="json")
    config["webhooks"] = [{"url": "ftp://a.example/h"}]
    # As any NATS client sends it (the reference client would refuse it before sending).
    reply = await nc.request(settings.subjects.api("workflow.create"),
                             json.dumps({"config": config}).encode(), timeout=5)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "validation-failed"
    err = error_from_info(ErrorInfo.model_validate_json(reply.data))
    assert isinstance(err, ValidationFailed)
    assert err.field == "config.webhooks.0.url"
    assert "http" in err.message


# -- the examples of docs/webhooks.md and docs/http-api.md --------------------------------

_DOCS = Path(__file__).resolve().parent.parent / "docs"
_DOC = (_DOCS / "webhooks.md").read_text()


def _blocks(lang: str, text: str = _DOC) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_the_plain_python_check_agrees_with_verify_signature() -> None:
    (_, plain) = _blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(plain, "webhooks.md", "exec"), namespace)
    verify = namespace["verify"]
    ts, body = str(int(time.time())), b'{"seq":1}'
    good = sign(SECRET, ts, body)
    for args in [(SECRET, ts, body, good), (SECRET, ts, body, f"v1=00,{good}"),
                 ("other", ts, body, good), (SECRET, ts, body + b" ", good),
                 (SECRET, "1700000000", body, sign(SECRET, "1700000000", body)),
                 (SECRET, "soon", body, good), (SECRET, ts, body, good[3:])]:
        assert verify(*args) == verify_signature(*args), args
    assert verify(SECRET, ts, body, good)


async def test_the_documented_receiver_takes_the_documented_workflows_events(
        hooked: Orchestrator, client: NatsflowClient, nc: Client, settings: NatsSettings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    (config_block,) = _blocks("json")
    config = json.loads(config_block)
    WorkflowConfig.model_validate(config)
    monkeypatch.setenv("WEBHOOK_SECRET", "known once the receiver has its URL")
    (recipe, _) = _blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(recipe, "webhooks.md", "exec"), namespace)
    received: list[Event] = namespace["received"]
    async with _serving(namespace["app"]) as base, running_demo_worker(settings):
        # Both webhooks go to the documented receiver: it dedupes the terminal event.
        for hook in config["webhooks"]:
            hook["url"] = f"{base}/hooks/natsflow"
        # What `natsflow webhook-secret <url>` prints, as the doc has the receiver read it.
        namespace["SECRET"] = derive_secret(SECRET, f"{base}/hooks/natsflow")
        await client.create(config)
        await client.wait("order_42", timeout=20)
        events = await read_events(nc, settings.subjects, "order_42")
        await wait_for(lambda: len(received) == len(events), what="every event")
        await asyncio.sleep(0.3)
        assert received == events
        async with httpx.AsyncClient() as http:
            forged = await http.post(f"{base}/hooks/natsflow", content=b"{}", headers={
                "Natsflow-Event-Id": "x:1", "Natsflow-Timestamp": str(int(time.time())),
                "Natsflow-Signature": "v1=" + "0" * 64})
        assert forged.status_code == 401
    assert _delivered(hooked, "delivered") == len(events) + 1
    # The documented request is what the receiver got (but for the time).
    (request,) = _blocks("http")
    head, _, shown_body = request.partition("\n\n")
    shown = json.loads(shown_body)
    last = received[-1].model_dump(mode="json")
    assert shown | {"time": None} == last | {"time": None}
    names = [line.split(":")[0] for line in head.splitlines()[1:]]
    assert names == ["Content-Type", EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]
    assert f"{EVENT_ID_HEADER}: order_42:{last['seq']}" in head


async def test_the_http_api_doc_webhook_example_is_what_the_gateway_answers(
        settings: NatsSettings, nc: Client) -> None:
    import httpx

    from gateway import create_app

    doc = (_DOCS / "http-api.md").read_text()
    section = doc[doc.index("#### Webhooks"):doc.index("### `GET /workflows`")]
    (command,) = _blocks("bash", section)
    body = shlex.split(command.replace("\\\n", " "))[-1]
    (answer,) = _blocks("http", section)
    shown = json.loads(answer.partition("\n\n")[2].replace('[...]', '[]'))
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.post("/workflows", content=body,
                               headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    got = resp.json()
    assert {k: v for k, v in got.items() if k != "errors"} == \
        {k: v for k, v in shown.items() if k != "errors"}
