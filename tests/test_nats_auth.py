"""NATS refusing the credentials is reported as such (issue 14, item 14): its own code
``nats-auth-failed``, exit status 4, a 503 problem and a readiness report from the
gateway, on a real nats-server that requires a user and password."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import run_cli

from contracts.errors import NatsAuthFailed, Unavailable
from gateway import create_app
from natsflow.embedded import EmbeddedNats, free_port
from transport.connect import NatsSettings, connect

USER, PASSWORD = "ana", "s3cret"


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A nats-server of its own that lets in only USER with PASSWORD."""
    store = tmp_path_factory.mktemp("nats-auth")
    server = EmbeddedNats(store, log_file=Path(store) / "nats.log",
                          extra_args=["--user", USER, "--pass", PASSWORD])
    server.start()
    yield server
    server.stop()


async def _natsflow(*args: str, env: dict[str, str]) -> tuple[int, str]:
    code, _, err = await run_cli(*args, env=env)
    return code, err


def _env(server: EmbeddedNats, **more: str) -> dict[str, str]:
    return {"NATS_URL": server.url, "NATSFLOW_PREFIX": "a" + uuid.uuid4().hex[:8],
            "NATS_USER": "", "NATS_PASSWORD": "", "NATS_TOKEN": "", **more}


async def test_cli_reports_a_wrong_password_with_its_code_and_exit_4(
        locked_server: EmbeddedNats) -> None:
    code, err = await _natsflow("status", "anything", "--user", USER, "--password", "wrong",
                                env=_env(locked_server))
    assert code == 4, err
    assert err.startswith("error[nats-auth-failed]: "), err
    assert "refused user 'ana'" in err and "wrong" not in err  # never the password
    code, err = await _natsflow("status", "anything", env=_env(locked_server))
    assert code == 4, err
    assert err.startswith("error[nats-auth-failed]: "), err
    assert "requires credentials" in err


async def test_right_password_gets_through_and_an_absent_server_is_still_unreachable(
        locked_server: EmbeddedNats) -> None:
    code, err = await _natsflow("status", "anything", env=_env(
        locked_server, NATS_USER=USER, NATS_PASSWORD=PASSWORD))
    assert code == 3 and err.startswith("error[unavailable]: no orchestrator"), err
    code, err = await _natsflow("status", "anything", "--user", USER, "--password", "x",
                                "--nats-url", f"nats://127.0.0.1:{free_port()}", env={})
    assert code == 3 and err.startswith("error[unavailable]: cannot reach NATS"), err


async def test_connect_gives_up_on_refused_credentials_even_without_a_timeout(
        locked_server: EmbeddedNats) -> None:
    settings = NatsSettings(servers=[locked_server.url], user=USER, password="wrong")
    with pytest.raises(NatsAuthFailed) as refused:
        await asyncio.wait_for(connect(settings, name="t", timeout=None), 30)
    assert refused.value.retryable is False
    assert isinstance(refused.value, Unavailable)
    nc = await connect(settings.model_copy(update={"password": PASSWORD}), name="t")
    assert nc.is_connected
    await nc.close()


async def test_a_service_with_refused_credentials_exits_4_saying_why(
        locked_server: EmbeddedNats) -> None:
    code, err = await _natsflow("orchestrator", env=_env(
        locked_server, NATS_USER=USER, NATS_PASSWORD="wrong"))
    assert code == 4, err
    assert "error[nats-auth-failed]" in err


async def test_gateway_answers_503_nats_auth_failed_and_readyz_says_so(
        locked_server: EmbeddedNats) -> None:
    settings = NatsSettings(servers=[locked_server.url], user=USER, password="wrong",
                            prefix="a" + uuid.uuid4().hex[:8])
    app = create_app(settings, auth=None)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        for _ in range(200):  # the link's first attempt is refused within moments
            resp = await http.get("/readyz")
            if resp.json().get("code") == "nats-auth-failed":
                break
            await asyncio.sleep(0.05)
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["code"] == "nats-auth-failed" and body["retryable"] is False
        assert body["details"]["nats"] == {"ok": False, "code": "nats-auth-failed",
                                           "detail": body["details"]["nats"]["detail"]}
        assert "refused user 'ana'" in body["details"]["nats"]["detail"]
        created = await http.post("/workflows", json={
            "name": "x", "steps": [{"id": "a", "task": "demo.noop"}]})
        assert created.status_code == 503 and created.json()["code"] == "nats-auth-failed"
