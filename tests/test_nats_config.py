"""``natsflow nats-config``: the documented commands write a config nats-server accepts,
and the services run from the env files it writes (nkeys and passwords alike)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import running_demo_worker
from typer.testing import CliRunner

from contracts.errors import NatsAuthFailed
from contracts.models import WorkflowState
from natsflow._nats_config import DEFAULT_USERS, parse_user
from natsflow.cli import app
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats, find_nats_server, free_port
from orchestrator import Orchestrator
from transport.connect import NatsSettings, connect

ROOT = Path(__file__).resolve().parent.parent
SECURITY_DOC = (ROOT / "docs" / "security.md").read_text()


def _documented_commands() -> list[list[str]]:
    """Every ``natsflow nats-config`` command line of docs/security.md, as argv."""
    joined = SECURITY_DOC.replace("\\\n", " ")
    found = re.findall(r"^uv run natsflow (nats-config[^\n#]*)", joined, flags=re.M)
    return [shlex.split(line) for line in found]


def _env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: shlex.split(v)[0] for k, v in pairs}


def test_the_docs_show_nats_config_commands() -> None:
    assert len(_documented_commands()) >= 3


@pytest.mark.parametrize("argv", _documented_commands(), ids=" ".join)
def test_each_documented_command_writes_a_config_the_server_accepts(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NATSFLOW_PREFIX", raising=False)
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    conf = tmp_path / argv[argv.index("--out") + 1]
    checked = subprocess.run([find_nats_server(), "-t", "-c", str(conf / "nats-server.conf")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    written = list(conf.iterdir())
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written)
    assert len(list(conf.glob("*.env"))) == (argv.count("--user") or 6)


@pytest.mark.parametrize("auth", ["nkeys", "password"])
async def test_services_run_from_the_env_files_it_writes(auth: str, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    port = free_port()
    result = CliRunner().invoke(app, [
        "nats-config", "--out", str(out), "--auth", auth, "--prefix", "cfg",
        "--nats-url", f"nats://127.0.0.1:{port}", "--user", "orchestrator",
        "--user", "worker:w=" + ",".join(DEFAULT_USERS[3].task_types), "--user", "submitter:ci",
        "--user", "watcher"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (out / "nats-server.conf").read_text()
    if auth == "nkeys":
        assert "password" not in text and re.search(r'nkey: "U[A-Z0-9]{55}"', text)
        assert (out / "w.nk").read_text().startswith("SU")
    else:
        assert '"$2b$' in text and _env(out / "ci.env")["NATS_PASSWORD"] not in text
    # The users as written; the port and store are this test's.
    server = EmbeddedNats(tmp_path / "store", port=port, log_file=tmp_path / "nats.log",
                          config=text[text.index("authorization {"):])
    with server:
        with pytest.raises(NatsAuthFailed):
            await connect(NatsSettings(servers=[server.url], prefix="cfg"), name="anon",
                          timeout=5)
        users = {name: NatsSettings.from_env(_env(out / f"{name}.env"))
                 for name in ("orchestrator", "w", "ci", "watcher")}
        assert users["ci"].inbox_prefix == "_INBOX.ci"
        orch = Orchestrator(users["orchestrator"], stop_grace=1.0)
        await orch.start()
        try:
            async with running_demo_worker(users["w"]):
                ci = await connect(users["ci"], name="test-ci")
                watcher = await connect(users["watcher"], name="test-watcher")
                try:
                    reply = await NatsflowClient(ci, users["ci"].subjects).create({
                        "name": "cfg", "steps": [
                            {"id": "a", "task": "demo.add", "input": {"a": 1, "b": 2}}]})
                    final = await NatsflowClient(watcher, users["watcher"].subjects).wait(
                        reply.id, timeout=30)
                finally:
                    await ci.close()
                    await watcher.close()
        finally:
            await orch.stop()
    assert final.status is not None and final.status.state == WorkflowState.COMPLETED
    assert final.status.output == {"a": {"sum": 3}}


@pytest.mark.parametrize(("spec", "error"), [
    ("boss", "unknown role"), ("watcher=x.y", "only a worker"),
    ("worker:w", "needs its task types")])
def test_a_bad_user_is_refused_with_a_reason(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_user(spec)
    result = CliRunner().invoke(app, ["nats-config", "--nsc", "--user", spec])
    assert result.exit_code == 2 and error in result.output


def test_nsc_prints_a_command_per_user_and_writes_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["nats-config", "--nsc", "--out", str(tmp_path / "x"),
                                      "--user", "watcher", "--user", "worker:m=email.send"])
    assert result.exit_code == 0, result.output
    assert result.output.count("nsc add user") == 2
    assert "--allow-pub '$JS.API.CONSUMER.MSG.NEXT.NATSFLOW_TASKS.worker-email_send'" in (
        result.output)
    assert not (tmp_path / "x").exists()
