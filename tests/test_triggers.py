"""Triggers against a real nats-server: messages on a subject start workflows."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import read_dead_letters, run_cli
from nats.aio.client import Client
from pydantic import ValidationError

from contracts.errors import (
    ExpressionError,
    IdConflict,
    NamespaceForbidden,
    TriggerNotFound,
    ValidationFailed,
    validation_failed,
)
from contracts.permissions import Permissions, permissions_for
from contracts.subjects import Subjects
from contracts.triggers import (
    TriggerSpec,
    cover,
    map_message,
    subject_covers,
    subjects_collide,
)
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.trigger_client import TriggerClient

NOOP = {"name": "noop", "steps": [{"id": "echo", "kind": "transform",
                                   "output": "${input}"}]}


def _trigger(name: str, subject: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "subject": subject, "definition": "noop",
            "id": "order-${msg.data.id}", "input": {"order": "${msg.data.id}",
                                                   "kind": "${msg.subject}"}, **more}


async def _workflow_ids(nc: Client, subjects: Subjects) -> set[str]:
    kv = await nc.jetstream().key_value(subjects.workflows_bucket)
    try:
        return set(await kv.keys())
    except Exception:
        return set()


@pytest.fixture
async def triggers(engine: object, client: NatsflowClient) -> TriggerClient:
    await client.put_definition("noop", NOOP)
    return TriggerClient.of(client)


# -- pure ----------------------------------------------------------------------------
def test_subject_relations() -> None:
    assert subjects_collide("orders.*", "orders.created")
    assert subjects_collide("orders.>", "orders.a.b")
    assert not subjects_collide("orders.*", "orders.a.b")
    assert not subjects_collide("orders.a", "orders.b")
    assert subject_covers("orders.*", "orders.x") and not subject_covers("orders.x", "orders.*")
    assert subject_covers("orders.>", "orders.*.x") and not subject_covers("orders.*", "orders.>")
    assert cover(["orders.x", "orders.*", "pay.>", "pay.a.b"]) == ["orders.*", "pay.>"]


def test_map_message() -> None:
    spec = TriggerSpec.model_validate(_trigger("t", "orders.*", when="msg.data.total > 10"))
    body = map_message(spec, subject="orders.created",
                       data=json.dumps({"id": 7, "total": 20}).encode(), headers=None)
    assert body == {"definition": "noop", "id": "order-7",
                    "input": {"order": 7, "kind": "orders.created"}, "labels": {"trigger": "t"}}
    assert map_message(spec, subject="orders.x", data=b'{"id": 1, "total": 1}',
                       headers=None) is None
    with pytest.raises(ExpressionError) as err:
        map_message(spec, subject="orders.x", data=b"not json", headers=None)
    assert err.value.field == "when"


# -- over NATS -----------------------------------------------------------------------
async def test_messages_start_workflows_with_when_and_mapping(
        triggers: TriggerClient, nc: Client, settings: Any, engine: Any) -> None:
    s = settings.subjects
    reply = await triggers.create_trigger(_trigger("big", "shop.orders.*",
                                                   when="msg.data.total >= 100"))
    assert reply.created
    assert not (await triggers.create_trigger(_trigger("big", "shop.orders.*",
                                                       when="msg.data.total >= 100"))).created
    for i in range(6):  # a plain publisher: it knows nothing of natsflow
        await nc.publish("shop.orders.created", json.dumps({"id": i, "total": i * 40}).encode())
    await nc.flush()

    async def stats() -> Any:
        return (await triggers.get_trigger("big")).stats

    for _ in range(100):
        st = await stats()
        if st.started + st.skipped == 6:
            break
        await asyncio.sleep(0.1)
    assert (st.started, st.skipped, st.matched, st.failed) == (3, 3, 3, 0)
    counted = engine.metrics.trigger_messages
    for outcome, n in (("started", 3), ("skipped", 3), ("received", 6)):
        assert counted.labels(namespace="default", trigger="big",
                              outcome=outcome)._value.get() == n
    assert await _workflow_ids(nc, s) == {"order-3", "order-4", "order-5"}
    status = (await triggers.get("order-4")).status
    assert status is not None and status.labels["trigger"] == "big"


async def test_unmappable_message_is_dead_lettered_with_reason_and_trigger(
        triggers: TriggerClient, nc: Client, settings: Any) -> None:
    await triggers.create_trigger(_trigger("strict", "pay.done"))
    await nc.publish("pay.done", b'{"no_id": true}')
    await nc.flush()
    [(subject, letter)] = await read_dead_letters(nc, settings.subjects, count=1)
    assert subject == settings.subjects.dlq("expression-error")
    assert letter.reason.field == "input.order"
    assert letter.reason.details == {"trigger": "strict", "namespace": "default",
                                     "expression": "msg.data.id"}
    assert letter.subject == "pay.done"
    await wait_for_stats(triggers, "strict", lambda st: st.failed == 1)


async def wait_for_stats(triggers: TriggerClient, name: str, ok: Any,
                         timeout: float = 10.0, namespace: str | None = None) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        st = (await triggers.get_trigger(name, namespace=namespace)).stats
        if ok(st):
            return st
        if loop.time() > end:
            raise AssertionError(f"stats of {name}: {st}")
        await asyncio.sleep(0.1)


async def test_pause_stops_consumption_and_resume_continues(
        triggers: TriggerClient, nc: Client, settings: Any) -> None:
    await triggers.create_trigger(_trigger("p", "inv.*"))
    await nc.publish("inv.a", b'{"id": 1}')
    await wait_for_stats(triggers, "p", lambda st: st.started == 1)
    paused = await triggers.pause_trigger("p", note="maintenance")
    assert paused.trigger.paused and paused.trigger.note == "maintenance"
    await asyncio.sleep(0.5)  # every replica has seen it
    for i in (2, 3):
        await nc.publish("inv.a", json.dumps({"id": i}).encode())
    await nc.flush()
    await asyncio.sleep(1.5)
    assert (await triggers.get_trigger("p")).stats.received == 1
    assert await _workflow_ids(nc, settings.subjects) == {"order-1"}
    await triggers.resume_trigger("p")
    await wait_for_stats(triggers, "p", lambda st: st.started == 3)
    assert await _workflow_ids(nc, settings.subjects) == {"order-1", "order-2", "order-3"}


@pytest.mark.parametrize(("change", "field"), [
    ({"when": "msg.data.("}, "when"),
    ({"when": "foo.bar"}, "when"),
    ({"id": "${nope}"}, "id"),
    ({"subject": "orders..x"}, "subject"),
    ({"subject": "*.created"}, "subject"),
    ({"subject": "$JS.API.>"}, "subject"),
    ({"definition": None}, "definition"),
])
async def test_bad_trigger_names_the_field_locally(change: dict[str, Any], field: str) -> None:
    try:
        TriggerSpec.model_validate({**_trigger("bad", "orders.*"), **change})
    except ValidationError as exc:
        assert validation_failed(exc).field == field
    except (ValidationFailed, ExpressionError) as exc:
        assert exc.field == field
    else:
        raise AssertionError("accepted")


async def test_bad_triggers_are_refused_by_the_orchestrator(
        triggers: TriggerClient, nc: Client, settings: Any) -> None:
    prefix = settings.subjects.prefix
    for subject in (f"{prefix}.submit", f"{prefix}.>", "$KV.x.y"):
        with pytest.raises(ValidationFailed) as err:
            await triggers.create_trigger(_trigger("bad", subject))
        assert err.value.field == "subject", subject
    with pytest.raises(ValidationFailed) as err:
        await triggers.create_trigger(_trigger("bad", "a.b", stream="NO_SUCH_STREAM"))
    assert err.value.field == "stream"
    # Partly overlapping core subjects: one stream cannot capture both.
    await triggers.create_trigger(_trigger("one", "ovl.*.x"))
    with pytest.raises(ValidationFailed) as err:
        await triggers.create_trigger(_trigger("two", "ovl.y.*"))
    assert err.value.field == "subject"
    # Covered by another trigger's subject: fine, both get the message.
    await triggers.create_trigger(_trigger("three", "ovl.y.x", id="three-${msg.data.id}"))
    with pytest.raises(IdConflict):
        await triggers.create_trigger(_trigger("one", "ovl.*.z"))
    names = [t.trigger.spec.name for t in (await triggers.list_triggers()).triggers]
    assert names == ["one", "three"]
    await triggers.delete_trigger("three")
    assert [t.trigger.spec.name for t in (await triggers.list_triggers()).triggers] == ["one"]


# -- over HTTP -----------------------------------------------------------------------
@pytest.fixture
async def http(triggers: TriggerClient, settings: Any, nc: Client
               ) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def test_http_lifecycle(http: httpx.AsyncClient, nc: Client) -> None:
    made = await http.post("/triggers", json=_trigger("web", "web.orders.*"))
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/triggers/web"
    assert (await http.post("/triggers", json=_trigger("web", "web.orders.*"))
            ).status_code == 200
    other = await http.post("/triggers", json=_trigger("web", "web.other"))
    assert other.status_code == 409, other.text
    await nc.publish("web.orders.new", b'{"id": 9}')
    for _ in range(100):
        got = (await http.get("/triggers/web/stats")).json()
        if got["started"]:
            break
        await asyncio.sleep(0.1)
    assert got["started"] == 1
    assert (await http.get("/workflows/order-9")).json()["input"] == {
        "order": 9, "kind": "web.orders.new"}
    paused = await http.post("/triggers/web/pause", json={"note": "why not"})
    assert paused.json()["paused"] is True and paused.json()["note"] == "why not"
    assert (await http.post("/triggers/web/resume")).json()["paused"] is False
    listed = (await http.get("/triggers")).json()["triggers"]
    assert [t["trigger"]["spec"]["name"] for t in listed] == ["web"]
    assert (await http.delete("/triggers/web")).status_code == 200
    gone = await http.get("/triggers/web")
    assert gone.status_code == 404 and gone.json()["code"] == "trigger-not-found"


_BAD: list[tuple[dict[str, Any], str]] = [
    ({"when": "msg.data.("}, "when"),
    ({"when": "size(msg) > nope"}, "when"),
    ({"input": {"x": "${steps.a.output}"}}, "input.x"),
    ({"id": "order-${msg.data.id"}, "id"),
    ({"subject": "orders.>.x"}, "subject"),
    ({"subject": "$JS.API.STREAM.LIST"}, "subject"),
    ({"subject": "PREFIX.submit"}, "subject"),
    ({"subject": "PREFIX.events.>"}, "subject"),
    ({"subject": ">"}, "subject"),
    ({"stream": "NOPE"}, "stream"),
    ({"stream": "KV_PREFIX_workflows"}, "stream"),
    ({"definition": "nope"}, "definition"),
    ({"definition": None, "config": {"steps": [{"id": "a", "kind": "transform",
                                                "output": "${input.x}"}], "nope": 1}},
     "config.nope"),
    ({"name": "bad name"}, "name"),
]

async def test_http_bad_trigger_is_400_naming_the_field(
        http: httpx.AsyncClient, settings: Any) -> None:
    for change, field in _BAD:
        body = {k: (v.replace("PREFIX", settings.subjects.prefix) if isinstance(v, str)
                    else v) for k, v in {**_trigger("bad", "orders.*"), **change}.items()}
        got = await http.post("/triggers", json=body)
        assert got.status_code in (400, 404), (change, got.text)
        assert got.json()["field"] == field, (change, got.text)
    assert (await http.get("/triggers")).json() == {"triggers": []}


# -- docs/triggers.md ----------------------------------------------------------------
DOC = (Path(__file__).parent.parent / "docs" / "triggers.md").read_text()


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC, flags=re.S | re.M)


async def test_the_doc_example_starts_the_documented_workflow(
        engine: object, client: NatsflowClient, nc: Client) -> None:
    trigger, definition = (yaml.safe_load(b) for b in _doc_blocks("yaml")[:2])
    [pub] = [line for line in _doc_blocks("sh")[0].splitlines() if line.startswith("nats pub")]
    _, _, subject, payload = shlex.split(pub)
    expected = json.loads(_doc_blocks("json")[0])
    await client.put_definition(definition["name"], definition)
    triggers = TriggerClient.of(client)
    assert (await triggers.create_trigger(trigger)).created
    try:
        await nc.publish(subject, payload.encode())
        st = await wait_for_stats(triggers, trigger["name"], lambda st: st.started == 1)
        assert st.matched == 1
        status = (await client.get(expected["workflow"])).status
        assert status is not None
        assert status.input == expected["input"] and status.labels == expected["labels"]
        await nc.publish(subject, json.dumps({"id": 43, "total": 5, "customer": "x"}).encode())
        await wait_for_stats(triggers, trigger["name"], lambda st: st.skipped == 1)
    finally:
        # The documented subject is the server's, shared by every test on it: the capture
        # stream must not outlive the test (the last trigger's delete drops it).
        await triggers.delete_trigger(trigger["name"])


async def test_cli_creates_lists_and_pauses(engine: object, client: NatsflowClient,
                                            settings: Any, tmp_path: Path) -> None:
    await client.put_definition("noop", NOOP)
    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump(_trigger("cli", "cli.orders.*")))
    code, out, err = await run_cli("triggers", "create", str(spec), settings=settings)
    assert code == 0, err
    assert "trigger cli (default): cli.orders.* on core NATS -> definition noop" in out
    code, out, err = await run_cli("triggers", "pause", "cli", "--note", "later", "--json",
                                   settings=settings)
    assert code == 0, err
    assert json.loads(out)["trigger"]["paused"] is True


async def test_a_trigger_on_a_jetstream_stream_with_a_filter(
        triggers: TriggerClient, nc: Client, settings: Any) -> None:
    js = nc.jetstream()
    stream = f"SHOP_{settings.prefix}"
    await js.add_stream(name=stream, subjects=[f"{settings.prefix}-shop.>"])
    old = f"{settings.prefix}-shop.orders.eu"
    await js.publish(old, b'{"id": 1}')  # before the trigger: `deliver: new` skips it
    made = await triggers.create_trigger(_trigger(
        "js", f"{settings.prefix}-shop.orders.*", stream=stream, namespace="team-a",
        definition=None, config=NOOP))  # inline: the definition is the default's
    assert made.trigger.spec.stream == stream
    await js.publish(f"{settings.prefix}-shop.refunds.eu", b'{"id": 2}')  # not the filter
    await js.publish(old, b'{"id": 3}')
    st = await wait_for_stats(triggers, "js", lambda st: st.started == 1,
                              namespace="team-a")
    assert st.received == 1
    status = (await triggers.get("order-3", namespaces=["team-a"])).status
    assert status is not None and status.namespace == "team-a"
    # Another namespace's scope sees no such trigger.
    with pytest.raises(TriggerNotFound):
        await triggers.get_trigger("js", namespace="team-a", namespaces=["team-b"])
    assert (await triggers.list_triggers(namespaces=["team-b"])).triggers == []
    with pytest.raises(NamespaceForbidden):
        await triggers.create_trigger(_trigger("x", "a.b", namespace="team-a"),
                                      namespaces=["team-b"])


def test_the_orchestrator_may_be_let_read_a_stream_of_yours() -> None:
    s = Subjects("natsflow")
    c = s.trigger_consumer("default", "orders")
    needed = [f"$JS.API.CONSUMER.CREATE.ORDERS.{c}.orders.*", f"$JS.API.CONSUMER.INFO.ORDERS.{c}",
              f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{c}", f"$JS.API.CONSUMER.DELETE.ORDERS.{c}",
              "$JS.API.STREAM.INFO.ORDERS", f"$JS.ACK.ORDERS.{c}.1.2.3.4.5"]

    def allowed(perms: Permissions, subject: str) -> bool:
        return any(subject_covers(a, subject) for a in perms.publish)

    plain = permissions_for("orchestrator", s)
    assert not any(allowed(plain, n) for n in needed)
    opened = permissions_for("orchestrator", s, trigger_streams=["ORDERS"])
    assert all(allowed(opened, n) for n in needed)
    assert "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.ORDERS.>" in opened.subscribe
    # The capture stream is the orchestrator's own: allowed without asking.
    own = s.trigger_consumer("default", "x")
    assert allowed(plain, f"$JS.API.CONSUMER.MSG.NEXT.{s.triggers_stream}.{own}")


async def test_a_lost_capture_stream_is_made_again(triggers: TriggerClient, nc: Client,
                                                   settings: Any) -> None:
    s = settings.subjects
    await triggers.create_trigger(_trigger("heal", "heal.*"))
    await nc.jetstream().delete_stream(s.triggers_stream)  # as a server without its data
    await triggers.pause_trigger("heal")  # any change: every replica looks again
    await triggers.resume_trigger("heal")
    for _ in range(100):  # the stream, then the consume loop's consumer, made again
        try:
            await nc.jetstream().consumer_info(s.triggers_stream,
                                               s.trigger_consumer("default", "heal"))
            break
        except Exception:
            await asyncio.sleep(0.1)
    await nc.publish("heal.x", b'{"id": 5}')
    await wait_for_stats(triggers, "heal", lambda st: st.started == 1)
