"""Outbound calls: no SSRF. http steps, webhooks, request and publish steps against a
real nats-server (with its monitoring port on, the classic target), real orchestrators
and real HTTP servers on this machine, which natsflow must refuse to call unless an
operator opened them."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shlex
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
from helpers import read_dead_letters, wait_for
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from contracts.egress import LOOPBACK, EgressPolicy, IPAddress, address_rule
from contracts.errors import EgressRefused, ValidationFailed
from contracts.models import WorkflowState, WorkflowStatus
from contracts.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDelivery,
    derive_secret,
    verify_signature,
)
from natsflow.cli import app
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats, free_port
from orchestrator import Orchestrator
from orchestrator.egress import guarded_client
from orchestrator.webhooks import WebhookSettings
from transport.connect import NatsSettings

MASTER = "whsec-egress-test"

# -- a nats-server with its monitoring port on -------------------------------------------


@pytest.fixture(scope="module")
def monitor_port() -> int:
    """The HTTP monitoring port (/varz, /connz, /jsz) of this module's nats-server."""
    return free_port()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory,
                monitor_port: int) -> Iterator[EmbeddedNats]:
    """This module's nats-server, monitoring on 127.0.0.1 as operators often leave it."""
    store = tmp_path_factory.mktemp("nats-egress")
    server = EmbeddedNats(store, log_file=Path(store) / "nats.log",
                          extra_args=["-m", str(monitor_port)])
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def _orchestrator(settings: NatsSettings, egress: EgressPolicy | None = None,
                        **kwargs: Any) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(settings, stop_grace=1.0, egress=egress, **kwargs)
    await orch.start()
    try:
        yield orch
    finally:
        await orch.stop()


async def _run(client: NatsflowClient, wid: str, *steps: dict[str, Any],
               **config: Any) -> WorkflowStatus:
    await client.create({"name": "egress", "id": wid, "steps": list(steps), **config})
    status = (await client.wait(wid, timeout=30)).status
    assert status is not None
    return status


def _http_step(url: str, **more: Any) -> dict[str, Any]:
    return {"id": "call", "kind": "http", "url": url,
            "retry": {"max_attempts": 3, "initial_interval": 0.1}, **more}


def _refused(status: WorkflowStatus, rule: str) -> dict[str, Any]:
    """The step's error: egress-refused, not retried, naming the rule; its details."""
    assert status.state == WorkflowState.FAILED, status
    step = status.step("call")
    assert step.error is not None
    assert (step.error.code, step.error.retryable) == ("egress-refused", False), step.error
    assert step.attempts == 1
    assert step.output is None
    details = step.error.details or {}
    assert details["rule"] == rule
    assert details["host"] in step.error.message and rule in step.error.message
    return details


# -- http steps ---------------------------------------------------------------------------


async def test_an_http_step_to_the_nats_monitoring_port_is_refused_by_default(
        settings: NatsSettings, client: NatsflowClient, monitor_port: int) -> None:
    async with _orchestrator(settings):
        for path, wid in (("/varz", "varz"), ("/connz?subs=1", "connz"), ("/jsz", "jsz")):
            status = await _run(client, wid, _http_step(f"http://127.0.0.1:{monitor_port}"
                                                        f"{path}"))
            details = _refused(status, "loopback")
            assert details == {"host": "127.0.0.1", "address": "127.0.0.1", "rule": "loopback"}
            assert "server_id" not in status.model_dump_json()


async def test_the_allowlist_opens_the_monitoring_port(
        settings: NatsSettings, client: NatsflowClient, monitor_port: int) -> None:
    async with _orchestrator(settings, EgressPolicy.parse(["127.0.0.1/32"])):
        status = await _run(client, "varz-ok",
                            _http_step(f"http://127.0.0.1:{monitor_port}/varz"))
    assert status.state == WorkflowState.COMPLETED, status.error
    assert "server_id" in status.step("call").output


async def test_a_name_that_resolves_to_loopback_is_refused(
        settings: NatsSettings, client: NatsflowClient, monitor_port: int) -> None:
    async with _orchestrator(settings):
        status = await _run(client, "localhost",
                            _http_step(f"http://localhost:{monitor_port}/varz"))
    details = _refused(status, "loopback")
    assert details["host"] == "localhost"
    assert ipaddress.ip_address(details["address"]).is_loopback


async def test_other_schemes_are_refused(settings: NatsSettings, client: NatsflowClient,
                                         redirector: str) -> None:
    async with _orchestrator(settings, EgressPolicy.parse(["127.0.0.2/32"])):
        # A literal URL of another scheme is refused at submit, naming the field.
        for i, url in enumerate(("file:///etc/passwd", "ftp://127.0.0.2/x")):
            with pytest.raises(ValidationFailed) as refused:
                await _run(client, f"scheme{i}", _http_step(url))
            assert refused.value.field == "steps.0.url", refused.value
        # Through a redirect, the transport refuses them on the way.
        for i, target in enumerate(("file:///etc/passwd", "ftp://127.0.0.2/x")):
            status = await _run(client, f"hop{i}", _http_step(
                f"{redirector}/to", query={"url": target}))
            _refused(status, "scheme")


@pytest.fixture
async def redirector(monitor_port: int) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.2 (a loopback address of its own, so it can be allowed
    alone): /to?url=X redirects to X, /same redirects to its own /final."""

    async def to(request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=302)

    async def same(request: Request) -> Response:
        return RedirectResponse("/final", status_code=302)

    async def final(request: Request) -> Response:
        return JSONResponse({"final": True})

    app = Starlette(routes=[Route("/to", to), Route("/same", same), Route("/final", final)])
    async with _serving(app, host="127.0.0.2") as base:
        yield base


async def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(
        settings: NatsSettings, client: NatsflowClient, redirector: str,
        monitor_port: int) -> None:
    async with _orchestrator(settings, EgressPolicy.parse(["127.0.0.2/32"])):
        # Redirects within what is allowed are followed ...
        status = await _run(client, "hop-ok", _http_step(f"{redirector}/same"))
        assert status.state == WorkflowState.COMPLETED, status.error
        assert status.step("call").output == {"final": True}
        # ... a hop to the monitoring port is checked again, and refused.
        status = await _run(client, "hop-bad", _http_step(
            f"{redirector}/to", query={"url": f"http://127.0.0.1:{monitor_port}/varz"}))
    details = _refused(status, "loopback")
    assert details["address"] == "127.0.0.1"


# -- the connection goes to the address that was checked ----------------------------------


@pytest.fixture
async def local_web() -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 answering {"hello": "world"}."""

    async def hello(request: Request) -> Response:
        return JSONResponse({"hello": "world", "host": request.headers["host"]})

    async with _serving(Starlette(routes=[Route("/", hello)])) as base:
        yield base


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
        local_web: str) -> None:
    port = int(local_web.rsplit(":", 1)[1])
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        lookups.append(host)
        # rebind.test exists only here: a second lookup by the system would fail.
        return [ipaddress.ip_address("127.0.0.1")]

    policy = EgressPolicy.parse(["127.0.0.1/32"])
    async with guarded_client(policy, resolver=resolver) as http:
        resp = await http.get(f"http://rebind.test:{port}/")
    assert resp.json() == {"hello": "world", "host": f"rebind.test:{port}"}
    assert lookups == ["rebind.test"]


async def test_one_refused_address_refuses_the_name() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.7")]

    async with guarded_client(EgressPolicy(), resolver=resolver) as http:
        with pytest.raises(EgressRefused) as err:
            await http.get("http://mixed.test/")
    assert err.value.details == {"host": "mixed.test", "address": "10.0.0.7",
                                 "rule": "private"}


async def test_metadata_is_refused_by_name_and_opened_only_exactly() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        raise AssertionError("a metadata name is refused before it is resolved")

    async with guarded_client(EgressPolicy(), resolver=resolver) as http:
        with pytest.raises(EgressRefused) as err:
            await http.get("http://metadata.google.internal/computeMetadata/v1/")
    assert err.value.details == {"host": "metadata.google.internal", "rule": "cloud-metadata"}
    metadata = [ipaddress.ip_address("169.254.169.254")]
    with pytest.raises(EgressRefused):  # a broad CIDR does not open it
        EgressPolicy.parse(["169.254.0.0/16"]).check_addresses("x", metadata)
    EgressPolicy.parse(["169.254.0.0/16"]).check_addresses(
        "x", [ipaddress.ip_address("169.254.1.1")])
    EgressPolicy.parse(["169.254.169.254"]).check_addresses("x", metadata)


@pytest.mark.parametrize(("address", "rule"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::7f00:1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("fd12::1", "private"), ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("100.64.0.1", "carrier-grade-nat"),
    ("169.254.169.254", "cloud-metadata"), ("fd00:ec2::254", "cloud-metadata"),
    ("::ffff:169.254.169.254", "cloud-metadata"), ("255.255.255.255", "reserved"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("172.32.0.1", None),
])
def test_the_address_rules(address: str, rule: str | None) -> None:
    assert address_rule(ipaddress.ip_address(address)) == rule


def test_allowlist_entries_are_checked_and_wildcards_match_below() -> None:
    policy = EgressPolicy.parse(["10.0.0.0/8, internal.example", "*.corp.example", "::1"])
    assert policy.host_allowed("INTERNAL.example.") and policy.host_allowed("a.corp.example")
    assert not policy.host_allowed("corp.example") and not policy.host_allowed("evil.example")
    policy.check_addresses("db.corp.example", [ipaddress.ip_address("192.168.1.1")])
    policy.check_addresses("x", [ipaddress.ip_address("10.2.3.4"), ipaddress.ip_address("::1")])
    with pytest.raises(EgressRefused):
        policy.check_addresses("x", [ipaddress.ip_address("192.168.1.1")])
    for bad in ("not a host!", "http://x/"):
        with pytest.raises(ValidationFailed, match="--allow-egress"):
            EgressPolicy.parse([bad])
    for bad in ("a.>.b", "a..b"):
        with pytest.raises(ValidationFailed, match="--allow-subject"):
            EgressPolicy.parse(subjects=[bad])


def test_the_orchestrator_command_refuses_a_bad_allowlist() -> None:
    result = CliRunner().invoke(app, ["orchestrator", "--allow-egress", "no such/host"])
    assert result.exit_code == 2
    assert "error[validation-failed]" in result.stderr and "--allow-egress" in result.stderr


# -- request and publish steps -------------------------------------------------------------


async def test_request_steps_to_server_and_natsflow_subjects_are_refused_at_submit(
        settings: NatsSettings, client: NatsflowClient, nc: Client) -> None:
    s = settings.subjects
    async with _orchestrator(settings):
        for i, (subject, rule) in enumerate((
                ("$JS.API.INFO", "server-subject"), ("$KV.x", "server-subject"),
                ("$SRV.PING", "server-subject"), ("$SYS.REQ.SERVER.PING", "server-subject"),
                (s.result("x"), "natsflow-subject"), (s.api("workflow.get"),
                                                      "natsflow-subject"))):
            with pytest.raises(ValidationFailed) as err:
                await client.create({"name": "r", "id": f"lit{i}", "steps": [
                    {"id": "ok", "kind": "transform", "output": 1},
                    {"id": "ask", "kind": "request", "subject": subject}]})
            assert err.value.field == "config.steps.1.subject"
            assert err.value.step == "ask" and rule in err.value.message
        # A publish step, a map's item step and a natsflow.request task alike.
        for i, steps in enumerate((
                [{"id": "tell", "kind": "publish", "subject": "$KV.b.k", "stream": True}],
                [{"id": "each", "kind": "map", "items": "[1]",
                  "step": {"kind": "request", "subject": s.result("x")}}],
                [{"id": "raw", "task": "natsflow.request",
                  "input": {"subject": "$JS.API.INFO"}}])):
            with pytest.raises(ValidationFailed) as err:
                await client.create({"name": "p", "id": f"pub{i}", "steps": steps})
            assert err.value.field == ("config.steps.0.subject", "config.steps.0.step.subject",
                                       "config.steps.0.input.subject")[i]
        # Fire and forget: the submit is a dead letter naming the field.
        await nc.jetstream().publish(s.submit, json.dumps({"name": "f", "id": "ff", "steps": [
            {"id": "ask", "kind": "request", "subject": "$JS.API.INFO"}]}).encode())
        ((_, letter),) = await read_dead_letters(nc, s, count=1)
        assert (letter.reason.code, letter.reason.field) == ("validation-failed",
                                                             "steps.0.subject")


async def test_a_templated_subject_is_refused_when_sent(
        settings: NatsSettings, client: NatsflowClient) -> None:
    s = settings.subjects
    async with _orchestrator(settings):
        for i, (subject, rule) in enumerate((("$JS.API.INFO", "server-subject"),
                                             ("$KV.x.y", "server-subject"),
                                             (s.result("x"), "natsflow-subject"))):
            for kind in ("request", "publish"):
                status = await _run(client, f"tpl{i}{kind}", {
                    "id": "call", "kind": kind, "subject": "${input.subject}",
                    "retry": {"max_attempts": 3, "initial_interval": 0.1}},
                    input={"subject": subject})
                err = status.step("call").error
                assert status.state == WorkflowState.FAILED
                assert err is not None and (err.code, err.retryable) == \
                    ("forbidden-subject", False), err
                assert err.details == {"subject": subject, "rule": rule}
                assert status.step("call").attempts == 1


async def test_the_subject_allowlist_opens_what_it_names(
        settings: NatsSettings, client: NatsflowClient) -> None:
    async with _orchestrator(settings, EgressPolicy.parse(subjects=["$JS.API.INFO"])):
        status = await _run(client, "jsinfo", {"id": "call", "kind": "request",
                                               "subject": "$JS.API.INFO"})
        assert status.state == WorkflowState.COMPLETED, status.error
        info = status.step("call").output
        assert info["type"] == "io.nats.jetstream.api.v1.account_info_response"
        with pytest.raises(ValidationFailed):  # only what it names
            await client.create({"name": "r", "id": "jskv", "steps": [
                {"id": "ask", "kind": "request", "subject": "$KV.x"}]})


# -- webhooks -------------------------------------------------------------------------------


@asynccontextmanager
async def _serving(app: Any, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[str, dict[str, list[tuple[dict[str, str], bytes]]]]]:
    """An HTTP server taking POSTs on /<name> (204; /bad: 400); yields its base URL and
    what each got."""
    got: dict[str, list[tuple[dict[str, str], bytes]]] = {}

    async def hook(request: Request) -> Response:
        name = request.path_params["name"]
        got.setdefault(name, []).append((dict(request.headers), await request.body()))
        return Response(status_code=400 if name == "bad" else 204)

    async with _serving(Starlette(routes=[Route("/{name}", hook, methods=["POST"])])) as base:
        yield base, got


_HOOKED = {"name": "hooked", "steps": [{"id": "a", "kind": "transform", "output": 1}]}


async def test_a_webhook_to_loopback_is_dead_lettered_by_default(
        settings: NatsSettings, client: NatsflowClient, nc: Client,
        receivers: tuple[str, dict[str, Any]]) -> None:
    base, got = receivers
    async with _orchestrator(settings, webhook_settings=WebhookSettings(secret=MASTER),
                             builtins=False):
        await client.create({**_HOOKED, "id": "wh_lo",
                             "webhooks": [{"url": f"{base}/a?token=t0k3n"}]})
        ((subject, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
    assert subject == settings.subjects.dlq("egress-refused")
    assert letter.reason.code == "egress-refused" and letter.deliveries == 1
    assert letter.reason.details is not None
    assert letter.reason.details["rule"] == "loopback"
    assert letter.reason.details["address"] == "127.0.0.1"
    assert "t0k3n" not in letter.reason.message
    assert not got


async def test_each_receiver_has_its_own_secret(
        settings: NatsSettings, client: NatsflowClient, nc: Client,
        receivers: tuple[str, dict[str, list[tuple[dict[str, str], bytes]]]]) -> None:
    base, got = receivers
    given = "c-secret-given-at-submit"
    async with _orchestrator(settings, EgressPolicy.parse(LOOPBACK), builtins=False,
                             webhook_settings=WebhookSettings(secret=MASTER)):
        await client.create({**_HOOKED, "id": "wh_two", "webhooks": [
            {"url": f"{base}/a"}, {"url": f"{base}/b"}, {"url": f"{base}/c", "secret": given},
            {"url": f"{base}/d", "unsigned": True}]})
        await wait_for(lambda: len(got) == 4, what="four deliveries")
    secrets = {"a": derive_secret(MASTER, f"{base}/a"), "b": derive_secret(MASTER, f"{base}/b"),
               "c": given}
    assert len(set(secrets.values())) == 3

    def verifies(secret: str, name: str) -> bool:
        ((headers, body),) = got[name]
        return verify_signature(secret, headers[TIMESTAMP_HEADER.lower()], body,
                                headers.get(SIGNATURE_HEADER.lower(), ""))

    for name in ("a", "b", "c"):
        assert verifies(secrets[name], name)
        # No other receiver's secret, and not the deployment's own, signs it.
        assert not any(verifies(other, name) for o, other in secrets.items() if o != name)
        assert not verifies(MASTER, name)
    assert SIGNATURE_HEADER.lower() not in got["d"][0][0]


async def test_without_any_secret_only_unsigned_webhooks_go_out(
        settings: NatsSettings, client: NatsflowClient, nc: Client,
        receivers: tuple[str, dict[str, list[tuple[dict[str, str], bytes]]]]) -> None:
    base, got = receivers
    async with _orchestrator(settings, EgressPolicy.parse(LOOPBACK), builtins=False):
        await client.create({**_HOOKED, "id": "wh_none", "webhooks": [
            {"url": f"{base}/plain"}, {"url": f"{base}/asked", "unsigned": True}]})
        ((subject, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
        await wait_for(lambda: "asked" in got, what="the unsigned delivery")
    assert subject == settings.subjects.dlq("webhook-unsigned")
    assert WebhookDelivery.model_validate_json(letter.data).url == f"{base}/plain"
    assert set(got) == {"asked"}


async def test_a_given_secret_is_never_shown_back_but_kept_for_signing(
        settings: NatsSettings, client: NatsflowClient, nc: Client,
        receivers: tuple[str, dict[str, list[tuple[dict[str, str], bytes]]]]) -> None:
    base, got = receivers
    secret = "s3cr3t-given-at-submit"
    async with _orchestrator(settings, EgressPolicy.parse(LOOPBACK), builtins=False,
                             webhook_settings=WebhookSettings(secret=MASTER)):
        await client.create({**_HOOKED, "id": "wh_secret",
                             "webhooks": [{"url": f"{base}/bad", "secret": secret}]})
        reply = await client.wait("wh_secret", timeout=20)
        # The receiver answers 400: the dead letter keeps the delivery, not its secret.
        ((_, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
        hook = {"url": f"{base}/good", "secret": secret}
        put = await client.put_definition("hooked", {**_HOOKED, "webhooks": [hook]})
        info = await client.get_definition("hooked")
        raw = await nc.request(settings.subjects.api("definition.get"),
                               json.dumps({"name": "hooked", "version": 1}).encode())
        await client.run("hooked", workflow_id="wh_def")
        await wait_for(lambda: "good" in got, what="the definition run's webhook")
    assert reply.status is not None and reply.status.state == WorkflowState.COMPLETED
    assert secret not in reply.model_dump_json()
    assert letter.reason.code == "webhook-rejected"
    assert secret not in letter.model_dump_json()
    assert WebhookDelivery.model_validate_json(letter.data).event.workflow_id == "wh_secret"
    for shown in (put.model_dump_json(), info.model_dump_json(), raw.data.decode()):
        assert secret not in shown and f"{base}/good" in shown
    # Left out of what is shown, the stored definition still has it: the run signs with it.
    ((headers, body),) = got["good"]
    assert verify_signature(secret, headers[TIMESTAMP_HEADER.lower()], body,
                            headers[SIGNATURE_HEADER.lower()])


def test_the_webhook_secret_command_prints_a_receivers_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://shop.example.com/hooks/natsflow"
    result = CliRunner().invoke(app, ["webhook-secret", url, "--webhook-secret", MASTER])
    assert (result.exit_code, result.stdout.strip()) == (0, derive_secret(MASTER, url))
    assert result.stdout.strip() != derive_secret(MASTER, url + "?x=1")
    monkeypatch.delenv("NATSFLOW_WEBHOOK_SECRET", raising=False)
    missing = CliRunner().invoke(app, ["webhook-secret", url])
    assert missing.exit_code == 2 and "--webhook-secret" in missing.stderr
    bad = CliRunner().invoke(app, ["webhook-secret", "ftp://x/", "--webhook-secret", MASTER])
    assert bad.exit_code == 2 and "error[validation-failed]" in bad.stderr


# -- natsflow dev opens loopback --------------------------------------------------------------


def test_natsflow_dev_opens_loopback_for_its_orchestrator(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    from natsflow import dev

    spawned: dict[str, list[str]] = {}

    class Stop(Exception):
        pass

    def spawn(name: str, args: list[str], **kwargs: Any) -> Any:
        spawned[name] = args
        raise Stop

    monkeypatch.setattr(dev, "_spawn", spawn)
    with pytest.raises(Stop):
        dev.run_dev(dev.DevOptions(port=free_port(), data_dir=tmp_path, nats_url="nats://x:1"))
    args = spawned["orchestrator"]
    policy = EgressPolicy.parse([args[args.index("--allow-egress") + 1]])
    policy.check_addresses("localhost", [ipaddress.ip_address("127.0.0.1"),
                                         ipaddress.ip_address("::1")])
    with pytest.raises(EgressRefused):
        policy.check_addresses("x", [ipaddress.ip_address("10.0.0.1")])



# -- docs/security.md ---------------------------------------------------------------------

_SECURITY_DOC = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()


def test_the_documented_allowlists_are_what_the_orchestrator_takes() -> None:
    lines = [shlex.split(line) for block in re.findall(r"^```sh\n(.*?)^```", _SECURITY_DOC,
                                                       flags=re.S | re.M)
             for line in block.splitlines()
             if line.startswith("uv run natsflow orchestrator")]  # (other sections' too)
    assert len(lines) == 2
    command = typer.main.get_command(app).commands["orchestrator"]  # type: ignore[attr-defined]
    for argv in lines:
        assert argv[:4] == ["uv", "run", "natsflow", "orchestrator"]
        params = command.make_context("orchestrator", argv[4:]).params
        policy = EgressPolicy.parse([params["allow_egress"] or ""],
                                    [params["allow_subject"] or ""])
        assert policy.hosts or policy.networks or policy.subjects


async def test_the_documented_refusal_is_what_a_step_gets(
        settings: NatsSettings, client: NatsflowClient, monitor_port: int) -> None:
    (block,) = re.findall(r"^```json\n(.*?)^```", _SECURITY_DOC, flags=re.S | re.M)
    shown = json.loads(block.replace("8222", str(monitor_port)))
    async with _orchestrator(settings):
        status = await _run(client, "doc", _http_step(f"http://127.0.0.1:{monitor_port}/varz"))
    err = status.step("call").error
    assert err is not None
    assert err.model_dump(exclude_none=True) == shown


async def test_an_http_step_to_the_gateway_itself_is_refused(
        settings: NatsSettings, client: NatsflowClient) -> None:
    # The gateway's own API (here open, as `natsflow dev` runs it) must not be a way in:
    # a workflow calling it would act with whatever the gateway may do.
    from gateway import create_app

    async with _serving(create_app(settings, auth=None)) as gateway, \
            _orchestrator(settings):
        status = await _run(client, "gw-self", _http_step(f"{gateway}/workflows"))
    details = _refused(status, "loopback")
    assert details["host"] == "127.0.0.1"
