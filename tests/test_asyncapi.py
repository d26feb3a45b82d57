"""The AsyncAPI document: true to the code, complete, committed, and served by the gateway."""

from __future__ import annotations

import inspect
import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from typer.testing import CliRunner

from contracts.errors import ErrorInfo
from contracts.messages import CancelNotice, DeadLetter, TaskMessage
from contracts.models import Event, EventType, WorkflowConfig
from contracts.operations import OPERATIONS
from contracts.subjects import Subjects
from gateway import create_app
from natsflow.asyncapi import asyncapi_json, asyncapi_schema
from natsflow.cli import app as cli
from orchestrator.index import IndexService
from transport.connect import NatsSettings

ROOT = Path(__file__).parent.parent
COMMITTED = ROOT / "docs" / "asyncapi.json"
SUBJECTS_DOC = (ROOT / "docs" / "subjects.md").read_text()
_PARAM = "PARAM"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("%7B", "{").replace("%7D", "}").replace("~1", "/").replace("~0", "~")
        node = node[part]
    if isinstance(node, dict) and set(node) == {"$ref"}:  # a reference to a reference
        return _resolve(doc, node["$ref"])
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _payload(doc: dict[str, Any], channel: str) -> dict[str, Any]:
    """The payload schema of the (only) message of ``channel``."""
    (message,) = doc["channels"][channel]["messages"].values()
    payload: dict[str, Any] = _resolve(doc, message["$ref"])["payload"]
    return payload


# -- the committed file ------------------------------------------------------------------


def test_committed_document_is_what_the_documented_command_prints() -> None:
    commands = [shlex.split(line) for block in re.findall(r"^```sh\n(.*?)^```", SUBJECTS_DOC,
                                                          flags=re.S | re.M)
                for line in block.splitlines() if "asyncapi" in line]
    assert ["uv", "run", "natsflow", "asyncapi", ">", "docs/asyncapi.json"] in commands
    result = CliRunner().invoke(cli, ["asyncapi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == asyncapi_json()
    assert COMMITTED.read_text() == result.stdout, (
        "docs/asyncapi.json is stale: run `uv run natsflow asyncapi > docs/asyncapi.json`")


def test_the_cli_takes_a_prefix_and_refuses_a_bad_one() -> None:
    result = CliRunner().invoke(cli, ["asyncapi", "--prefix", "acme.nf"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == asyncapi_schema(Subjects("acme.nf"))
    bad = CliRunner().invoke(cli, ["asyncapi", "--prefix", "no spaces"])
    assert bad.exit_code != 0
    assert "invalid-request" in bad.stderr


# -- complete ----------------------------------------------------------------------------


def _builder_families(cls: type[Subjects], s: Subjects) -> dict[str, set[str]]:
    """What every subject builder of ``cls`` returns under the prefix, as families: the
    tokens after the prefix up to the first variable or wildcard one. Maps family to the
    builders that give it."""
    families: dict[str, set[str]] = {}
    head = s.prefix + "."
    for name, attr in inspect.getmembers(cls):
        if name.startswith("_") or name in {"is_internal", "kind_of"}:  # not builders
            continue
        if isinstance(attr, property):
            value = getattr(s, name)
        elif inspect.isfunction(attr):
            required = [p for p in inspect.signature(attr).parameters.values()
                        if p.name != "self" and p.default is inspect.Parameter.empty]
            value = getattr(s, name)(*[_PARAM] * len(required))
        else:
            continue
        for subject in value if isinstance(value, list) else [value]:
            if not (isinstance(subject, str) and subject.startswith(head)):
                continue  # a stream, consumer, bucket or service name, or a KV put
            tokens = []
            for token in subject[len(head):].split("."):
                if token in (_PARAM, "*", ">") or token.isdigit():  # digits: a partition
                    break
                tokens.append(token)
            families.setdefault(".".join(tokens), set()).add(name)
    return families


def _doc_families(doc: dict[str, Any], s: Subjects) -> set[str]:
    families = set()
    for channel in doc["channels"].values():
        if channel["address"] is None:  # the requester's inbox, for replies
            continue
        assert channel["address"].startswith(s.prefix + "."), channel["address"]
        tokens = []
        for token in channel["address"][len(s.prefix) + 1:].split("."):
            if "{" in token:
                break
            tokens.append(token)
        families.add(".".join(tokens))
    return families


def _undocumented(cls: type[Subjects], doc: dict[str, Any]) -> set[str]:
    s = cls()
    documented = _doc_families(doc, s)
    return {name for family, names in _builder_families(cls, s).items()
            if not any(d == family or d.startswith(family + ".") for d in documented)
            for name in names}


def test_every_subject_family_of_subjects_is_in_the_document() -> None:
    doc = asyncapi_schema()
    families = _builder_families(Subjects, Subjects())
    # The scheme of contracts/subjects.py and docs/subjects.md, and nothing else.
    assert set(families) == {"submit", "cmd.wf", "cmd.batch", "result", "timer",
                             "sched", "task", "cancel", "events", "webhooks", "dlq", "api",
                             "limit", "member"}
    assert _undocumented(Subjects, doc) == set()
    # Every documented family is built by Subjects (addresses come from there).
    for family in _doc_families(doc, Subjects()):
        assert any(family == f or family.startswith(f + ".") for f in families), family


def test_a_new_subject_family_without_documentation_is_caught() -> None:
    class MoreSubjects(Subjects):
        def heartbeat(self, workflow_id: str) -> str:
            return f"{self.prefix}.hb.{workflow_id}"

    assert _undocumented(MoreSubjects, asyncapi_schema()) == {"heartbeat"}


async def test_every_api_endpoint_the_services_serve_is_documented(
        engine: object, nc: Client, settings: NatsSettings) -> None:
    index = IndexService(settings, nc=nc)
    await index.start()
    try:
        s = settings.subjects
        served: dict[str, str] = {}
        for service in (s.service_name, s.index_service_name):
            info = json.loads((await nc.request(f"$SRV.INFO.{service}", b"",
                                                timeout=5)).data)
            for endpoint in info["endpoints"]:
                assert endpoint["subject"].startswith(s.api(""))
                served[endpoint["subject"][len(s.api("")):]] = service
    finally:
        await index.stop()
    assert served == {op: o.service_name(s) for op, o in OPERATIONS.items()}
    doc = asyncapi_schema(s)
    assert {c["address"] for c in doc["channels"].values()} >= {s.api(op) for op in served}


# -- true to the code --------------------------------------------------------------------


def test_every_ref_resolves_and_every_placeholder_is_a_parameter() -> None:
    doc = asyncapi_schema()
    for ref in _refs(doc):
        _resolve(doc, ref)
    for name, channel in doc["channels"].items():
        placeholders = re.findall(r"\{(\w+)\}", channel["address"] or "")
        assert sorted(channel.get("parameters", {})) == sorted(placeholders), name
    events = doc["channels"]["events"]
    assert events["address"] == Subjects().event("{workflow_id}", "{event_type}")
    assert events["parameters"]["event_type"]["enum"] == [t.value for t in EventType]


def test_payloads_are_the_contract_models() -> None:
    doc = asyncapi_schema()
    schemas = doc["components"]["schemas"]

    def model_of(channel: str) -> str:
        ref = _payload(doc, channel)["$ref"]
        return str(ref.rsplit("/", 1)[-1])

    assert model_of("submit") == "WorkflowConfig"
    assert model_of("task") == "TaskMessage"
    assert model_of("cancel") == "CancelNotice"
    assert model_of("events") == "Event"
    assert model_of("dlq") == "DeadLetter"
    result = _payload(doc, "result")
    result = _resolve(doc, result["$ref"]) if "$ref" in result else result
    assert result["discriminator"] == "kind"
    assert [r["$ref"].rsplit("/", 1)[-1] for r in result["oneOf"]] == [
        "TaskSucceeded", "TaskFailed", "TaskProgress"]
    models: list[type[BaseModel]] = [WorkflowConfig, TaskMessage, CancelNotice, Event,
                                     DeadLetter, ErrorInfo]
    for operation, op in OPERATIONS.items():
        assert model_of(f"api.{operation}") == op.request.__name__
        reply = doc["operations"][f"api.{operation}"]["reply"]
        payloads = [_resolve(doc, m["$ref"])["payload"]["$ref"].rsplit("/", 1)[-1]
                    for m in reply["messages"]]
        assert payloads == [*(m.__name__ for m in op.replies), "ErrorInfo"]
        models += [op.request, *op.replies]
    # Each schema is pydantic's for the model, as the REST API and the validators see it.
    _, defs = models_json_schema([(m, "validation") for m in models],
                                 ref_template="#/components/schemas/{model}")
    for name, schema in defs["$defs"].items():
        assert schemas[name] == schema, name


def test_another_prefix_moves_every_address() -> None:
    doc = asyncapi_schema(Subjects("acme.nf"))
    addresses = [c["address"] for c in doc["channels"].values() if c["address"] is not None]
    assert addresses
    assert all(a.startswith("acme.nf.") for a in addresses)
    bindings = [c["bindings"]["nats"]["subject"] for c in doc["channels"].values()
                if "bindings" in c]
    assert len(bindings) == len(addresses)
    assert all(b.startswith("acme.nf.") for b in bindings)


# -- served by the gateway ---------------------------------------------------------------


async def test_gateway_serves_the_document_and_a_viewer_next_to_openapi() -> None:
    # No lifespan runs under ASGITransport, so nothing connects: the document needs no NATS.
    app = create_app(NatsSettings(prefix="acme"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.get("/asyncapi.json")
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == asyncapi_schema(Subjects("acme"))
        page = await http.get("/asyncapi")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "AsyncApiStandalone.render" in page.text
        assert "acme.api.workflow.create" in page.text
        openapi = (await http.get("/openapi.json")).json()
    assert not {"/asyncapi", "/asyncapi.json"} & set(openapi["paths"])
    assert "/asyncapi.json" in openapi["info"]["description"]
