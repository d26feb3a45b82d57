"""The definitions registry through the HTTP gateway (in-process ASGI, real NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client

from gateway import create_app
from natsflow.demo import worker
from transport.connect import NatsSettings

PROBLEM = "application/problem+json"

GREET_YAML = """\
name: greet
steps:
  - id: hi
    task: demo.echo
    input: {text: "hi ${input.who}"}
output: "${steps.hi.output.text}"
"""


@pytest.fixture
async def http(engine: object, settings: NatsSettings,
               nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with worker.running(settings), httpx.AsyncClient(
            transport=transport, base_url="http://gw") as client:
        yield client


async def test_put_yaml_then_json_lists_versions_and_runs_by_name(
        http: httpx.AsyncClient) -> None:
    put = await http.put("/definitions/greet", content=GREET_YAML,
                         headers={"content-type": "application/yaml"})
    assert put.status_code == 201, put.text
    assert put.json()["version"] == 1
    assert put.headers["location"] == "/definitions/greet/versions/1"
    same = await http.put("/definitions/greet", content=GREET_YAML,
                          headers={"content-type": "text/yaml"})
    assert same.status_code == 200 and same.json()["version"] == 1
    changed = await http.put("/definitions/greet", json={
        "steps": [{"id": "hi", "task": "demo.echo", "input": {"text": "hey ${input.who}"}}],
        "output": "${steps.hi.output.text}"})
    assert changed.status_code == 201 and changed.json()["version"] == 2
    info = (await http.get("/definitions/greet")).json()
    assert info["latest"]["version"] == 2 and [v["version"] for v in info["versions"]] == [1, 2]
    listed = (await http.get("/definitions")).json()["definitions"]
    assert [(d["name"], d["latest_version"]) for d in listed] == [("greet", 2)]
    v1 = await http.get("/definitions/greet/versions/1")
    assert v1.status_code == 200 and v1.json()["config"]["steps"][0]["input"] == {
        "text": "hi ${input.who}"}

    run = await http.post("/workflows", json={"definition": "greet", "version": 1,
                                              "input": {"who": "ada"}, "id": "run-1"})
    assert run.status_code == 202, run.text
    for _ in range(100):
        status = (await http.get("/workflows/run-1")).json()
        if status["state"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert status["output"] == "hi ada"
    assert (status["definition"], status["definition_version"]) == ("greet", 1)


async def test_definition_errors_are_problems_naming_the_field(http: httpx.AsyncClient) -> None:
    bad = await http.put("/definitions/bad", json={"steps": [
        {"id": "a", "task": "demo.echo", "depends_on": ["ghost"]}]})
    assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["field"] == "config.steps.0.depends_on"
    broken = await http.put("/definitions/bad", content="steps: [",
                            headers={"content-type": "application/yaml"})
    assert broken.status_code == 400 and "YAML" in broken.json()["detail"]
    missing = await http.get("/definitions/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "definition-not-found"
    unknown_run = await http.post("/workflows", json={"definition": "nothing"})
    assert unknown_run.status_code == 404
    wrong = await http.post("/workflows", json={"definition": "x", "colour": 1})
    assert wrong.status_code == 400 and wrong.json()["field"] == "colour"
