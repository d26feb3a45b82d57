"""``natsflow verify`` and a workflow created with ``start: false`` (issue 14, item 19):
not started is reported as such, and only real violations fail the check."""

from __future__ import annotations

import json

from helpers import run_cli

from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from natsflow.promises import check_all, collect
from transport.connect import NatsSettings

_HELLO = {"name": "later", "steps": [{"id": "a", "task": "demo.noop"}]}


async def _verify(settings: NatsSettings, *ids: str) -> tuple[int, str, str]:
    return await run_cli("verify", *ids, settings=settings)


async def test_a_workflow_never_started_is_not_a_violation(
        demo_worker: object, client: NatsflowClient, settings: NatsSettings) -> None:
    await client.create({**_HELLO, "id": "ran"})
    await client.wait("ran", timeout=30)
    created = (await client.create({**_HELLO, "id": "held", "start": False})).status
    assert created is not None and created.state == WorkflowState.CREATED

    assert await check_all(client, ["ran", "held"]) == (2, [])
    code, out, err = await _verify(settings)
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines == ["held: not started (created with start: false)",
                     "2 workflows checked, 0 violations, 1 not started"]

    code, out, err = await _verify(settings, "held", "--json")
    assert code == 0, out + err
    assert json.loads(out) == {"checked": 1, "violations": [], "not_started": ["held"]}


async def test_a_real_violation_still_fails_next_to_a_workflow_not_started(
        engine: object, client: NatsflowClient, settings: NatsSettings) -> None:
    await client.create({**_HELLO, "id": "held", "start": False})
    code, out, err = await _verify(settings, "held", "never-submitted", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["not_started"] == ["held"]
    assert [(v["workflow_id"], v["promise"]) for v in report["violations"]] == [
        ("never-submitted", 1), ("never-submitted", 3)]


async def test_once_started_it_is_checked_as_any_other(
        demo_worker: object, client: NatsflowClient) -> None:
    await client.create({**_HELLO, "id": "held", "start": False})
    await client.start("held")
    await client.wait("held", timeout=30)
    found = await collect(client, ["held"])
    assert found["held"][0] is not None and found["held"][0].state == WorkflowState.COMPLETED
    assert await check_all(client, ["held"]) == (1, [])
