"""API keys and scopes on the gateway (issue 15, "HTTP: authentication and authorization").

Every test runs on a real nats-server: keys are made in the keys bucket exactly as
``natsflow keys create`` makes them, and gateways watch that bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from nats.aio.client import Client
from typer.testing import CliRunner

from contracts.keys import ALL_SCOPES, ApiKey, CreateKeyRequest, Scope, key_digest, mint_key
from gateway import ROUTE_SCOPES, create_app
from gateway._auth import KeyAuth, KeyCache
from natsflow.cli import app as cli_app
from natsflow.dev import DevOptions, run_dev
from natsflow.embedded import free_port
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

PROBLEM = "application/problem+json"
REALM = 'Bearer realm="natsflow"'
NATSFLOW = str(Path(sys.executable).parent / "natsflow")
#: Values for every path parameter of the gateway's routes.
PATH_VALUES = {"workflow_id": "wf-none", "name": "n1", "batch_id": "b-none",
               "operation": "stop", "version": "1"}
#: Routes served without a key (also with keys on).
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/asyncapi"),
        ("GET", "/asyncapi.json")}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _store(nc: Client, settings: NatsSettings) -> KeyStore:
    return await KeyStore.open(nc.jetstream(), Topology(settings.subjects))


async def _key(store: KeyStore, *scopes: Scope, **fields: Any) -> str:
    name = fields.pop("name", "k" + uuid.uuid4().hex[:8])
    made = await store.create(CreateKeyRequest(name=name, scopes=list(scopes), **fields),
                              now=datetime.now(UTC))
    return made.key


@asynccontextmanager
async def _gateway(settings: NatsSettings, nc: Client, **kwargs: Any
                   ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A gateway with keys on (the default), its lifespan running, keys loaded."""
    app = create_app(settings, nc=nc, request_timeout=2.0, **kwargs)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        await asyncio.wait_for(app.state.keys.ready.wait(), 10)
        yield app, http


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["status"] == status
    return body


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted((m, r.path) for r in app.routes if isinstance(r, APIRoute)
                  for m in r.methods)


async def _send(http: httpx.AsyncClient, method: str, path: str,
                headers: dict[str, str]) -> httpx.Response:
    url = path.format(**PATH_VALUES)
    params = {"subject": "not..valid"} if path == "/events" else None  # 400, not a stream
    body = b"{}" if method in ("POST", "PUT") else None
    return await http.request(method, url, headers={**headers, "content-type":
                                                    "application/json"},
                              content=body, params=params)


# -- 401 ----------------------------------------------------------------------------------


async def test_no_key_is_401_with_a_bearer_challenge(settings: NatsSettings,
                                                     nc: Client) -> None:
    async with _gateway(settings, nc) as (_, http):
        resp = await http.get("/workflows")
        body = _problem(resp, 401, "unauthenticated")
        assert resp.headers["www-authenticate"] == REALM
        assert body["type"] == "urn:natsflow:problem:unauthenticated"
        # Another scheme is no key either.
        resp = await http.get("/workflows", headers={"Authorization": "Basic dXNlcjpwdw=="})
        _problem(resp, 401, "unauthenticated")
        assert resp.headers["www-authenticate"] == REALM
        # The open routes stay open.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


async def test_a_bad_key_is_401_invalid_token(settings: NatsSettings, nc: Client) -> None:
    store = await _store(nc, settings)
    good = await _key(store, Scope.ADMIN)
    key_id = good.split("_")[1]
    _, unknown = mint_key()
    wrong_secret = f"nfk_{key_id}_{'A' * 32}"
    async with _gateway(settings, nc) as (_, http):
        for bad in (unknown, wrong_secret, "hello", good + "x", good[:-1]):
            resp = await http.get("/workflows/x", headers=_bearer(bad))
            _problem(resp, 401, "unauthenticated")
            assert resp.headers["www-authenticate"] == f'{REALM}, error="invalid_token"'
        # The good one is let through (then the workflow is not found).
        resp = await http.get("/workflows/x", headers=_bearer(good))
        assert resp.status_code not in (401, 403), resp.text


async def test_an_expired_key_is_401(settings: NatsSettings, nc: Client) -> None:
    store = await _store(nc, settings)
    live = await _key(store, Scope.WORKFLOWS_READ,
                      expires_at=datetime.now(UTC) + timedelta(days=1))
    # Stored as `keys create --expires` would have, a minute before it ran out.
    key_id, expired = mint_key()
    record = ApiKey(id=key_id, name="old", scopes=[Scope.ADMIN],
                    created_at=datetime.now(UTC) - timedelta(days=2),
                    expires_at=datetime.now(UTC) - timedelta(seconds=1),
                    key_sha256=key_digest(expired))
    await store.kv.put(key_id, record.model_dump_json().encode())
    async with _gateway(settings, nc) as (_, http):
        resp = await http.get("/definitions", headers=_bearer(expired))
        body = _problem(resp, 401, "unauthenticated")
        assert "expired" in body["detail"]
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        resp = await http.get("/workflows/x", headers=_bearer(live))
        assert resp.status_code not in (401, 403), resp.text


async def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(
        settings: NatsSettings, nc: Client, engine: object) -> None:
    store = await _store(nc, settings)
    key = await _key(store, Scope.WORKFLOWS_READ, name="soon-gone")
    other_nc = await connect(settings, name="second-gateway")
    try:
        async with _gateway(settings, nc) as (_, one), \
                _gateway(settings, other_nc) as (_, two):
            for http in (one, two):
                resp = await http.get("/workflows/wf-none", headers=_bearer(key))
                _problem(resp, 404, "workflow-not-found")
            # Revoked through the CLI, as an operator does.
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_app, ["keys", "revoke", "soon-gone"],
                env={"NATS_URL": settings.servers[0], "NATSFLOW_PREFIX": settings.prefix})
            assert result.exit_code == 0, result.output
            revoked = time.monotonic()
            refused: dict[int, float] = {}
            while len(refused) < 2 and time.monotonic() - revoked < 1.0:
                for i, http in enumerate((one, two)):
                    if i not in refused:
                        resp = await http.get("/workflows/wf-none", headers=_bearer(key))
                        if resp.status_code == 401:
                            refused[i] = time.monotonic() - revoked
                await asyncio.sleep(0.01)
            assert set(refused) == {0, 1}, f"still served a second after revocation: {refused}"
    finally:
        await other_nc.close()


# -- 403, per route, from the one table ---------------------------------------------------


def test_the_scope_table_is_every_route(settings: NatsSettings) -> None:
    for auth in (KeyAuth(), None):
        assert _routes(create_app(settings, auth=auth)) == sorted(ROUTE_SCOPES)
    assert {r for r, scope in ROUTE_SCOPES.items() if scope is None} == OPEN


def test_a_route_without_a_scope_cannot_be_added(settings: NatsSettings) -> None:
    app = create_app(settings, auth=None)
    with pytest.raises(LookupError, match="ROUTE_SCOPES"):
        @app.get("/new-route")
        async def new_route() -> None: ...


async def test_each_route_needs_its_scope(settings: NatsSettings, nc: Client,
                                          engine: object) -> None:
    store = await _store(nc, settings)
    keys = {scope: await _key(store, scope) for scope in Scope}
    # Every scope but the one a route needs (and admin, which has them all).
    without = {scope: await _key(store, *(ALL_SCOPES - {scope, Scope.ADMIN}))
               for scope in Scope}
    async with _gateway(settings, nc) as (app, http):
        scoped = [(m, p, s) for (m, p), s in ROUTE_SCOPES.items() if s is not None]
        assert len(scoped) == len(_routes(app)) - len(OPEN)
        for method, path, scope in scoped:
            resp = await _send(http, method, path, {})
            _problem(resp, 401, "unauthenticated")
            resp = await _send(http, method, path, _bearer(without[scope]))
            body = _problem(resp, 403, "forbidden")
            assert body["details"] == {"scope": scope.value}, (method, path)
            assert resp.headers["www-authenticate"] == (
                f'{REALM}, error="insufficient_scope", scope="{scope.value}"')
            for allowed in (keys[scope], keys[Scope.ADMIN]):
                resp = await _send(http, method, path, _bearer(allowed))
                assert resp.status_code not in (401, 403), (method, path, resp.text)
        for method, path in OPEN:
            if path != "/readyz":  # asks the orchestrator and index: slow without one
                resp = await _send(http, method, path, {})
                assert resp.status_code == 200, (method, path)


async def test_the_principal_carries_the_keys_scopes_and_namespaces(
        settings: NatsSettings, nc: Client) -> None:
    store = await _store(nc, settings)
    key = await _key(store, Scope.WORKFLOWS_READ, name="team-a",
                     namespaces=["team-a", "shared"])
    async with _gateway(settings, nc) as (app, _):
        cache: KeyCache = app.state.keys
        principal = cache.check(key, now=datetime.now(UTC))
    assert principal.name == "team-a" and principal.key_id == key.split("_")[1]
    assert principal.scopes == {Scope.WORKFLOWS_READ}
    assert principal.namespaces == {"team-a", "shared"}
    assert principal.sees("shared") and not principal.sees("default")
    assert not principal.grants(Scope.WORKFLOWS_WRITE)


async def test_openapi_declares_the_bearer_scheme_and_each_operations_scope(
        settings: NatsSettings, nc: Client) -> None:
    async with _gateway(settings, nc) as (_, http):
        spec = (await http.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for (method, path), scope in ROUTE_SCOPES.items():
        operation = spec["paths"].get(path, {}).get(method.lower())
        if operation is None:
            assert path in ("/metrics", "/asyncapi", "/asyncapi.json")  # not in the schema
            continue
        if scope is None:
            assert "security" not in operation, path
        else:
            assert operation["security"] == [{"ApiKey": [scope.value]}], path
            assert {"401", "403"} <= set(operation["responses"]), path


async def test_openapi_without_keys_declares_no_scheme(settings: NatsSettings) -> None:
    app = create_app(settings, auth=None)
    spec = app.openapi()
    assert "securitySchemes" not in spec.get("components", {})
    assert not any("security" in op for item in spec["paths"].values() for op in item.values())


# -- last use, and keys kept out of logs --------------------------------------------------


async def test_last_use_is_written_at_most_once_per_interval(settings: NatsSettings,
                                                             nc: Client) -> None:
    store = await _store(nc, settings)
    key = await _key(store, Scope.WORKFLOWS_READ)
    key_id = key.split("_")[1]
    created = await store.kv.get(key_id)
    assert ApiKey.model_validate_json(created.value or b"").last_used_at is None
    async with _gateway(settings, nc, auth=KeyAuth(touch_interval=3600)) as (_, http):
        for _ in range(5):
            await http.get("/workflows/x", headers=_bearer(key))
        deadline = time.monotonic() + 10
        while (entry := await store.kv.get(key_id)).revision == created.revision:
            assert time.monotonic() < deadline, "last use never written"
            await asyncio.sleep(0.05)
        assert ApiKey.model_validate_json(entry.value or b"").last_used_at is not None
        for _ in range(20):
            await http.get("/workflows/x", headers=_bearer(key))
        await asyncio.sleep(0.5)
        assert (await store.kv.get(key_id)).revision == entry.revision


async def test_revoked_key_is_not_written_back_by_a_late_last_use(
        settings: NatsSettings, nc: Client) -> None:
    store = await _store(nc, settings)
    await _key(store, Scope.WORKFLOWS_READ, name="late")
    (stored,) = await store.keys()
    await store.revoke("late")
    await store.touch(stored, now=datetime.now(UTC))  # compare-and-set: refused
    assert await store.keys() == []


async def test_keys_never_appear_in_logs_or_answers(settings: NatsSettings, nc: Client,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = await _store(nc, settings)
    good = await _key(store, Scope.WORKFLOWS_READ)
    expired_id, expired = mint_key()
    await store.kv.put(expired_id, ApiKey(
        id=expired_id, name="exp", scopes=[Scope.ADMIN],
        created_at=datetime.now(UTC) - timedelta(days=1),
        expires_at=datetime.now(UTC) - timedelta(hours=1),
        key_sha256=key_digest(expired)).model_dump_json().encode())
    _, unknown = mint_key()
    wrong = good[:-4] + "AAAA"
    answers = []
    async with _gateway(settings, nc) as (_, http):
        for key in (good, expired, unknown, wrong):
            for path in ("/workflows/x", "/definitions", "/workflows/bulk/stop"):
                method = "POST" if "bulk" in path else "GET"
                resp = await http.request(method, path, headers=_bearer(key), content=b"{}")
                answers.append(resp.text + json.dumps(dict(resp.headers)))
    secrets_ = [k.split("_", 2)[2] for k in (good, expired, unknown, wrong)]
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + str(record.args) + str(record.exc_info or "")
        for secret in secrets_:
            assert secret not in text, record
    for answer in answers:
        for secret in secrets_:
            assert secret not in answer


# -- natsflow keys ------------------------------------------------------------------------


def _cli_env(settings: NatsSettings) -> dict[str, str]:
    return {"NATS_URL": settings.servers[0], "NATSFLOW_PREFIX": settings.prefix}


async def _raw_entries(settings: NatsSettings) -> dict[str, bytes]:
    nc = await connect(settings, name="raw")
    try:
        kv = await nc.jetstream().key_value(settings.subjects.keys_bucket)
        return {k: (await kv.get(k)).value or b"" for k in await kv.keys()}
    finally:
        await nc.close()


def test_keys_create_ls_revoke(settings: NatsSettings) -> None:
    runner = CliRunner(env=_cli_env(settings))
    made = runner.invoke(cli_app, ["keys", "create", "--name", "ci", "--scope",
                                   "workflows:write", "--scope", "workflows:read",
                                   "--namespace", "team-a", "--expires", "30d"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert re.fullmatch(r"nfk_[0-9a-f]{12}_[A-Za-z0-9_-]{32}", key), made.stdout
    key_id = key.split("_")[1]
    assert key_id in made.stderr and "shown this once" in made.stderr
    assert key not in made.stderr

    # Only the hash is stored: the raw entry holds neither the key nor its secret.
    (raw,) = asyncio.run(_raw_entries(settings)).items()
    assert raw[0] == key_id
    assert key.encode() not in raw[1] and key.split("_", 2)[2].encode() not in raw[1]
    stored = json.loads(raw[1])
    assert stored["key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert stored["scopes"] == ["workflows:read", "workflows:write"]
    assert stored["namespaces"] == ["team-a"]
    expires = datetime.fromisoformat(stored["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < expires <= timedelta(days=30)

    listed = runner.invoke(cli_app, ["keys", "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    (info,) = json.loads(listed.stdout)
    assert info["id"] == key_id and info["name"] == "ci"
    assert "key_sha256" not in info and key not in listed.stdout
    table = runner.invoke(cli_app, ["keys", "ls"])
    assert table.exit_code == 0 and key not in table.stdout
    assert key_id in table.stdout and " ci " in table.stdout

    again = runner.invoke(cli_app, ["keys", "create", "--name", "ci", "--scope", "admin"])
    assert again.exit_code == 2 and "exists" in again.stderr

    revoked = runner.invoke(cli_app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0 and f"revoked key {key_id} (ci)" in revoked.stdout
    assert json.loads(runner.invoke(cli_app, ["keys", "ls", "--json"]).stdout) == []
    gone = runner.invoke(cli_app, ["keys", "revoke", "ci"])
    assert gone.exit_code == 2 and "no API key" in gone.stderr


def test_keys_create_refuses_what_it_cannot_store(settings: NatsSettings) -> None:
    runner = CliRunner(env=_cli_env(settings))
    for args in (["--scope", "everything"], ["--scope", "admin", "--expires", "soon"],
                 ["--scope", "admin", "--expires", "0d"],
                 ["--scope", "admin", "--namespace", "a.b"]):
        result = runner.invoke(cli_app, ["keys", "create", "--name", "x", *args])
        assert result.exit_code == 2, (args, result.output)
    assert asyncio.run(_raw_entries_or_none(settings)) is None


async def _raw_entries_or_none(settings: NatsSettings) -> dict[str, bytes] | None:
    try:
        return await _raw_entries(settings)
    except Exception:
        return None  # no bucket, or no key in it


# -- natsflow gateway and natsflow dev ----------------------------------------------------


_Spawned = list[tuple[subprocess.Popen[str], threading.Thread]]


def _read_lines(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    out = proc.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")),
                              daemon=True)
    reader.start()
    return reader


def _stop(proc: subprocess.Popen[str], reader: threading.Thread,
          sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    reader.join(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


@pytest.fixture
def spawned() -> Iterator[_Spawned]:
    procs: _Spawned = []
    yield procs
    for proc, reader in procs:
        _stop(proc, reader)


def _start_gateway(settings: NatsSettings, procs: _Spawned,
                   *args: str) -> tuple[str, list[str]]:
    port = free_port()
    env = {**os.environ, **_cli_env(settings)}
    proc = subprocess.Popen([NATSFLOW, "gateway", "--port", str(port), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    procs.append((proc, _read_lines(proc, lines)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "".join(lines)
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return url, lines
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)


def _first_status(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    # Until the keys are loaded the gateway answers 503; then 401 without a key.
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(url + path, headers=headers).status_code
        if status != 503 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


@pytest.mark.e2e
def test_gateway_command_serves_only_with_keys_unless_no_auth(
        settings: NatsSettings, spawned: _Spawned) -> None:
    url, lines = _start_gateway(settings, spawned)
    assert _first_status(url, "/definitions") == 401
    key = asyncio.run(_made_key(settings, Scope.DEFINITIONS_READ))
    # No orchestrator here, so a 503 once the key is let through.
    resp = httpx.get(f"{url}/definitions", headers=_bearer(key), timeout=30)
    assert resp.status_code == 503 and resp.json()["code"] != "unauthenticated", resp.text
    assert not any("authentication is OFF" in line for line in lines)

    open_url, open_lines = _start_gateway(settings, spawned, "--no-auth")
    resp = httpx.get(f"{open_url}/definitions", timeout=30)
    assert resp.status_code == 503 and resp.json()["code"] != "unauthenticated", resp.text
    warned = [line for line in open_lines if "authentication is OFF" in line]
    assert len(warned) == 1, "".join(open_lines)


async def _made_key(settings: NatsSettings, *scopes: Scope) -> str:
    nc = await connect(settings, name="test-keys")
    try:
        return await _key(await _store(nc, settings), *scopes)
    finally:
        await nc.close()


def test_dev_without_auth_listens_on_loopback_only(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    assert run_dev(DevOptions(host="0.0.0.0", port=free_port())) == 2
    assert "--auth" in capsys.readouterr().err


@pytest.mark.e2e
def test_dev_auth_prints_an_admin_key_that_the_gateway_takes(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NATSFLOW_PREFIX")}
    proc = subprocess.Popen(
        [NATSFLOW, "dev", "--auth", "--ephemeral", "--no-worker", "--port", str(port),
         "--nats-port", str(free_port())], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = _read_lines(proc, lines)
    try:
        deadline = time.monotonic() + 90
        while not any("natsflow events <id>" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        text = "".join(lines)
        (key,) = set(re.findall(r"nfk_[0-9a-f]{12}_[A-Za-z0-9_-]{32}", text))
        assert f"authorization: Bearer {key}" in text  # the printed curl carries it
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/workflows/x").status_code == 401
        resp = httpx.get(f"{url}/workflows/x", headers=_bearer(key), timeout=10)
        assert resp.status_code == 404, resp.text
    finally:
        assert _stop(proc, reader, signal.SIGINT) == 0, "".join(lines)


def test_the_documented_scope_table_is_the_code() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "http-api.md").read_text()
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE)` \| `([^`]+)` \| `([^`]+)` \|$", doc,
                      flags=re.M)
    assert {(m, p): Scope(s) for m, p, s in rows} == {
        route: scope for route, scope in ROUTE_SCOPES.items() if scope is not None}


async def test_the_principal_without_keys_is_anonymous_with_every_right(
        settings: NatsSettings, nc: Client) -> None:
    from starlette.requests import Request

    from gateway import current_principal
    from gateway._auth import ANONYMOUS

    def request(app: FastAPI) -> Request:
        return Request({"type": "http", "app": app, "headers": [], "method": "GET",
                        "path": "/healthz", "query_string": b""})

    anonymous = await current_principal(request(create_app(settings, auth=None, nc=nc)))
    assert anonymous is ANONYMOUS and anonymous.grants(Scope.ADMIN) and anonymous.sees("x")
    # With keys on, an open route acts for nobody: no scope, no namespace.
    nobody = await current_principal(request(create_app(settings, nc=nc)))
    assert not nobody.scopes and not nobody.sees("default")
