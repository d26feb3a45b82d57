"""The ``natsflow`` CLI against a real nats-server, with the services started by the CLI.

The orchestrator, the demo worker and the gateway run as ``natsflow <service>``
subprocesses (once for the module); the workflow commands run through typer's runner.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from contracts.models import Event, EventType, WorkflowStatus
from natsflow.cli import app
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats, free_port
from transport.connect import NatsSettings, connect

EXAMPLES = Path(__file__).parent.parent / "examples"


class Deployment:
    """The env and gateway URL of a running natsflow deployment."""

    def __init__(self, env: dict[str, str], gateway_url: str) -> None:
        self.env = env
        self.gateway_url = gateway_url


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "natsflow.cli", *args]


async def _orchestrator_answers(settings: NatsSettings) -> bool:
    nc = await connect(settings, name="test-probe")
    try:
        return await NatsflowClient(nc, settings.subjects).ping()
    finally:
        await nc.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(20))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


@pytest.fixture(scope="module")
def deployment(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    """Orchestrator, demo worker and gateway, started with ``natsflow <service>``."""
    prefix = "cli" + uuid.uuid4().hex[:8]
    settings = NatsSettings(servers=[nats_server.url], prefix=prefix)
    env = {**os.environ, "NATS_URL": nats_server.url, "NATSFLOW_PREFIX": prefix}
    logs = tmp_path_factory.mktemp("cli-logs")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(_cli(*args), env=env, stdout=log,
                                          stderr=subprocess.STDOUT))

    try:
        # All at once, as a supervisor starts them: each creates what it needs.
        spawn("orchestrator", "orchestrator")
        spawn("worker", "worker", "natsflow.demo:worker")
        spawn("index", "index")
        # The gateway takes API keys (its default); the CLI sends NATSFLOW_API_KEY.
        made = CliRunner(env=env).invoke(app, ["keys", "create", "--name", "cli",
                                               "--scope", "admin"])
        assert made.exit_code == 0, made.output
        env["NATSFLOW_API_KEY"] = made.stdout.strip()
        spawn("gateway", "gateway", "--port", str(port))
        deadline = time.monotonic() + 30
        while not asyncio.run(_orchestrator_answers(settings)):
            assert time.monotonic() < deadline, (logs / "orchestrator.log").read_text()
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (logs / "gateway.log").read_text()
            time.sleep(0.2)
        yield Deployment(env, url)
    finally:
        codes = _stop(procs)
    # Each service exits 0 on SIGTERM.
    assert codes == [0] * len(procs), [(logs / f).read_text() for f in os.listdir(logs)]


@pytest.fixture
def cli(deployment: Deployment) -> CliRunner:
    return CliRunner(env={k: deployment.env[k] for k in ("NATS_URL", "NATSFLOW_PREFIX",
                                                         "NATSFLOW_API_KEY")})


def _submit_json(cli: CliRunner, *args: str) -> WorkflowStatus:
    result = cli.invoke(app, ["submit", *args, "--json"])
    assert result.exit_code == 0, result.output
    return WorkflowStatus.model_validate_json(result.stdout)


def _wait_state(cli: CliRunner, workflow_id: str, states: set[str]) -> WorkflowStatus:
    deadline = time.monotonic() + 30
    while True:
        result = cli.invoke(app, ["status", workflow_id, "--json"])
        assert result.exit_code == 0, result.output
        status = WorkflowStatus.model_validate_json(result.stdout)
        if status.state in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("dev", "orchestrator", "gateway", "worker", "submit", "status", "stop",
                    "signal", "events"):
        assert command in result.stdout


def test_python_m_runs_the_cli() -> None:
    result = subprocess.run(_cli("--help"), capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "submit" in result.stdout


def test_submit_watch_shows_steps_and_exits_0(cli: CliRunner) -> None:
    result = cli.invoke(app, ["submit", str(EXAMPLES / "hello.yaml"), "--watch"])
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    for text in ("greet", "demo.echo", "add", "demo.add", "succeeded", '{"sum":5}'):
        assert text in result.stdout


def test_submit_watch_json_returns_the_final_status(cli: CliRunner) -> None:
    status = _submit_json(cli, str(EXAMPLES / "retry.yaml"), "--watch")
    assert status.state == "completed"
    assert status.output == {"total": 42, "attempts": 3}
    assert status.step("flaky").attempts == 3


def test_submit_json_file_then_status_and_events(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"name": "json-file", "steps": [
        {"id": "one", "task": "demo.add", "input": {"a": 40, "b": 2}}]}))
    created = _submit_json(cli, str(path))
    assert created.name == "json-file"
    done = _wait_state(cli, created.id, {"completed"})
    assert done.step("one").output == {"sum": 42}

    table = cli.invoke(app, ["status", created.id])
    assert table.exit_code == 0
    assert created.id in table.stdout and "completed" in table.stdout

    lines = cli.invoke(app, ["events", created.id, "--json"])
    assert lines.exit_code == 0, lines.output
    events = [Event.model_validate_json(line) for line in lines.stdout.splitlines()]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == EventType.WORKFLOW_CREATED
    assert events[-1].type == EventType.WORKFLOW_COMPLETED

    text = cli.invoke(app, ["events", created.id, "--follow"])
    assert text.exit_code == 0
    assert "workflow.completed" in text.stdout.splitlines()[-1]
    assert "step.succeeded" in text.stdout


def test_status_draws_the_steps_as_a_tree_with_durations(cli: CliRunner,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "diamond.yaml"
    path.write_text("name: diamond\nsteps:\n"
                    "  - {id: top, task: demo.echo, input: {text: a}}\n"
                    "  - {id: left, task: demo.sleep, input: {seconds: 0.3}, depends_on: [top]}\n"
                    "  - {id: right, task: demo.echo, input: {text: b}, depends_on: [top]}\n"
                    "  - {id: join, task: demo.echo, input: {text: c}, "
                    "depends_on: [right, left]}\n")
    created = _submit_json(cli, str(path))
    _wait_state(cli, created.id, {"completed"})
    tree = cli.invoke(app, ["status", created.id])
    assert tree.exit_code == 0, tree.output
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"workflow {created.id}  diamond  completed  ")
    assert any(x.endswith("4/4 steps finished") for x in lines), lines

    def depth(step: str) -> int:
        return next(len(x) - len(x.lstrip("│├└─ ")) for x in lines
                    if x.lstrip("│├└─ ").startswith(step + "  ")) // 4

    assert (depth("top"), depth("left"), depth("right")) == (1, 2, 2)
    assert depth("join") == 3  # under left, the slower of its two dependencies
    fields = _row(tree.stdout, "join")
    assert fields[:2] == ["demo.echo", "succeeded"]
    assert re.fullmatch(r"\d+\.\d\ds", fields[2]) and fields[3] == "after right"
    assert float(_row(tree.stdout, "left")[2][:-1]) >= 0.3


def test_failed_workflow_exits_1_with_its_error(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "fail.yaml"
    path.write_text("name: doomed\nsteps:\n  - {id: boom, task: demo.fail}\n")
    result = cli.invoke(app, ["submit", str(path), "--watch"])
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout
    assert "demo-failure" in result.stdout


def test_stop_a_running_workflow(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text("name: slow\nsteps:\n  - {id: nap, task: demo.sleep, "
                    "input: {seconds: 60, steps: 60}}\n")
    created = _submit_json(cli, str(path))
    result = cli.invoke(app, ["stop", created.id])
    assert result.exit_code == 0, result.output
    assert created.id in result.stdout
    _wait_state(cli, created.id, {"stopped"})

    again = cli.invoke(app, ["stop", created.id])
    assert again.exit_code == 2
    assert again.stderr.startswith("error[already-finished]:")


def test_submit_and_status_through_the_gateway(cli: CliRunner, deployment: Deployment) -> None:
    gw = ["--gateway", deployment.gateway_url]
    result = cli.invoke(app, ["submit", str(EXAMPLES / "hello.yaml"), "--watch", "--json", *gw])
    assert result.exit_code == 0, result.output
    status = WorkflowStatus.model_validate_json(result.stdout)
    assert status.state == "completed"
    again = cli.invoke(app, ["status", status.id, "--json", *gw])
    assert WorkflowStatus.model_validate_json(again.stdout).output == {"add": {"sum": 5}}

    missing = cli.invoke(app, ["status", "no-such-id", *gw])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error[workflow-not-found]:")

    # Without the key the gateway refuses, and the CLI says so (exit 4, as for NATS).
    anonymous = cli.invoke(app, ["status", status.id, *gw], env={"NATSFLOW_API_KEY": None})
    assert anonymous.exit_code == 4, anonymous.output
    assert anonymous.stderr.startswith("error[unauthenticated]:")


GATES = """\
name: gates
steps:
  - {id: first, kind: wait, signal: one}
  - {id: second, kind: wait, signal: two, depends_on: [first]}
  - {id: never, kind: transform, depends_on: [first], when: "false", output: 1}
"""


def test_signal_over_nats_and_through_the_gateway(cli: CliRunner, deployment: Deployment,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "gates.yaml"
    path.write_text(GATES)
    created = _submit_json(cli, str(path))
    assert created.step("first").state == "waiting"  # a wait step begins with its workflow

    table = cli.invoke(app, ["status", created.id])
    assert table.exit_code == 0, table.output
    # Steps without a task type show their kind; the new states have their names.
    assert _row(table.stdout, "first")[:2] == ["wait", "waiting"]
    assert _row(table.stdout, "second")[:2] == ["wait", "pending"]

    sent = cli.invoke(app, ["signal", created.id, "one", "--payload", '{"by": "ana"}',
                            "--json"])
    assert sent.exit_code == 0, sent.output
    status = WorkflowStatus.model_validate_json(sent.stdout)
    assert status.step("first").output == {"by": "ana"}
    assert status.step("never").state == "skipped"
    assert status.step("second").state == "waiting"

    table = cli.invoke(app, ["status", created.id])
    assert _row(table.stdout, "never")[:2] == ["transform", "skipped"]
    assert _row(table.stdout, "second")[:2] == ["wait", "waiting"]

    payload = tmp_path / "two.json"
    payload.write_text('[1, 2, 3]')
    last = cli.invoke(app, ["signal", created.id, "two", "--payload", f"@{payload}",
                            "--gateway", deployment.gateway_url])
    assert last.exit_code == 0, last.output
    assert f"signal two sent to workflow {created.id} (completed)" in last.stdout
    done = _wait_state(cli, created.id, {"completed"})
    assert done.output == {"second": [1, 2, 3]}

    for gw in ([], ["--gateway", deployment.gateway_url]):
        late = cli.invoke(app, ["signal", created.id, "two", *gw])
        assert late.exit_code == 2, late.output
        assert late.stderr.startswith("error[already-finished]:")
        missing = cli.invoke(app, ["signal", "no-such-id", "two", *gw])
        assert missing.exit_code == 2, missing.output
        assert missing.stderr.startswith("error[workflow-not-found]:")


def _row(tree: str, step: str) -> list[str]:
    """The fields after the step id on the status tree's line for ``step``."""
    for line in tree.splitlines():
        cells = re.split(r"\s{2,}", line.lstrip("│├└─ "))
        if cells[0] == step:
            return cells[1:]
    raise AssertionError(f"no line for {step!r} in\n{tree}")


@pytest.mark.parametrize(("payload", "message"), [
    ("{not json", "--payload is not valid JSON"),
    ("@/no/such/file.json", "cannot read /no/such/file.json"),
])
def test_signal_with_a_bad_payload_is_a_client_error(payload: str, message: str) -> None:
    result = CliRunner().invoke(app, ["signal", "some-id", "go", "--payload", payload])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error[invalid-request]: {message}"), result.stderr


@pytest.mark.parametrize("command", [["status", "no-such-id"], ["events", "no-such-id"],
                                     ["stop", "no-such-id"], ["signal", "no-such-id", "go"]])
def test_unknown_id_is_a_client_error(cli: CliRunner, command: list[str]) -> None:
    result = cli.invoke(app, command)
    assert result.exit_code == 2
    assert result.stderr.startswith("error[workflow-not-found]:")
    assert "Traceback" not in result.output


# -- errors that need no running services ---------------------------------------------


@pytest.mark.parametrize(("content", "code", "names"), [
    ("name: x\nsteps: [\n", "invalid-request", "not valid YAML"),
    ("- just\n- a list\n", "invalid-request", "mapping"),
    ("name: x\nsteps:\n  - {id: a, task: demo.echo, color: red}\n", "validation-failed",
     "steps.0.color"),
    ("name: x\nsteps:\n  - {id: a, task: 'bad task'}\n", "validation-failed", "steps.0.task"),
    ("name: x\nsteps:\n  - {id: a, task: demo.echo, depends_on: [b]}\n"
     "  - {id: b, task: demo.echo, depends_on: [a]}\n", "invalid-graph", "step a"),
    ("name: x\nsteps:\n  - {id: a, task: demo.echo, depends_on: [ghost]}\n", "invalid-graph",
     "field steps.0.depends_on"),
])
def test_invalid_file_is_a_client_error(tmp_path: Path, content: str, code: str,
                                        names: str) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(content)
    result = CliRunner().invoke(app, ["submit", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error[{code}]:"), result.stderr
    assert names in result.stderr
    assert "Traceback" not in result.output


def test_missing_file_is_a_client_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["submit", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error[invalid-request]: cannot read")


def test_no_orchestrator_is_unavailable(nats_server: EmbeddedNats) -> None:
    env = {"NATS_URL": nats_server.url, "NATSFLOW_PREFIX": "nobody" + uuid.uuid4().hex[:6]}
    result = CliRunner(env=env).invoke(app, ["status", "anything"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error[unavailable]:")


def test_no_nats_is_unavailable() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["status", "anything", "--nats-url", url])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error[unavailable]: cannot reach NATS")


def test_worker_with_a_bad_target_is_a_client_error() -> None:
    for target in ("no_colon", "natsflow.nothing_here:worker", "natsflow.demo:nobody"):
        result = CliRunner().invoke(app, ["worker", target])
        assert result.exit_code == 2, (target, result.output)
        assert result.stderr.startswith("error[invalid-request]:")


def test_definitions_apply_ls_show_and_run(cli: CliRunner, tmp_path: Path) -> None:
    name = "cli-greet-" + os.urandom(3).hex()
    yaml_file = tmp_path / "greet.yaml"
    yaml_file.write_text(f"name: {name}\nsteps:\n  - id: hi\n    task: demo.echo\n"
                         "    input: {text: 'hi ${input.who}'}\n")
    first = cli.invoke(app, ["definitions", "apply", str(yaml_file)])
    assert first.exit_code == 0, first.output
    assert f"definition {name} stored as version 1" in first.stdout
    same = cli.invoke(app, ["definitions", "apply", str(yaml_file)])
    assert "unchanged, latest is version 1" in same.stdout
    json_file = tmp_path / "greet.json"
    json_file.write_text(json.dumps({"name": name, "steps": [
        {"id": "hi", "task": "demo.echo", "input": {"text": "hey ${input.who}"}}]}))
    second = cli.invoke(app, ["definitions", "apply", str(json_file), "--json"])
    assert json.loads(second.stdout)["definition"]["version"] == 2
    listed = cli.invoke(app, ["definitions", "ls", "--json"])
    assert {"name": name, "latest_version": 2} in [
        {k: d[k] for k in ("name", "latest_version")}
        for d in json.loads(listed.stdout)["definitions"]]
    shown = cli.invoke(app, ["definitions", "show", name, "--version", "1"])
    assert json.loads(shown.stdout)["config"]["steps"][0]["input"] == {"text": "hi ${input.who}"}
    ran = cli.invoke(app, ["run", name, "--input", '{"who": "ada"}', "--version", "1",
                           "--watch", "--json"])
    assert ran.exit_code == 0, ran.output
    status = WorkflowStatus.model_validate_json(ran.stdout)
    assert status.step("hi").output == {"text": "hi ada"} and status.definition_version == 1
    missing = cli.invoke(app, ["run", "no-such-definition"])
    assert missing.exit_code == 2 and "definition-not-found" in missing.stderr


def test_pause_resume_retry_and_rerun_from_the_cli(cli: CliRunner, tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wid = "cli-ctl-" + os.urandom(3).hex()
    wf.write_text(f"name: ctl\nid: {wid}\nsteps:\n"
                  "  - {id: nap, task: demo.sleep, input: {seconds: 1}}\n"
                  "  - {id: bad, task: demo.fail, depends_on: [nap]}\n")
    assert cli.invoke(app, ["submit", str(wf)]).exit_code == 0
    paused = cli.invoke(app, ["pause", wid, "--json"])
    assert paused.exit_code == 0, paused.output
    assert WorkflowStatus.model_validate_json(paused.stdout).state == "paused"
    refused = cli.invoke(app, ["retry", wid])
    assert refused.exit_code == 2 and "invalid-state" in refused.stderr
    assert cli.invoke(app, ["resume", wid]).exit_code == 0
    _wait_state(cli, wid, {"failed"})
    retried = cli.invoke(app, ["retry", wid, "--json"])
    assert retried.exit_code == 0, retried.output
    assert WorkflowStatus.model_validate_json(retried.stdout).runs == 2
    _wait_state(cli, wid, {"failed"})
    rerun = cli.invoke(app, ["rerun", wid, "--from-step", "bad", "--id", wid + "-b"])
    assert rerun.exit_code == 0, rerun.output
    status = _wait_state(cli, wid + "-b", {"failed"})
    assert status.step("nap").reused_from == wid
    bad = cli.invoke(app, ["retry", wid, "--inputs", "[1]"])
    assert bad.exit_code == 2 and "invalid-request" in bad.stderr


def test_ls_lists_newest_first_with_filters(cli: CliRunner, tmp_path: Path) -> None:
    tag = os.urandom(3).hex()
    wf = tmp_path / "wf.yaml"
    for i in range(2):
        wf.write_text(f"name: ls-{tag}\nid: ls-{tag}-{i}\nlabels: {{tag: '{tag}'}}\n"
                      "steps:\n  - {id: a, task: demo.noop}\n")
        assert cli.invoke(app, ["submit", str(wf), "--watch"]).exit_code == 0
    for _ in range(50):
        result = cli.invoke(app, ["ls", "--label", f"tag:{tag}", "--json"])
        ids = [w["id"] for w in json.loads(result.stdout)["items"]]
        if len(ids) == 2:
            break
        time.sleep(0.1)
    assert ids == [f"ls-{tag}-1", f"ls-{tag}-0"]
    table = cli.invoke(app, ["ls", "--name", f"ls-{tag}", "--state", "completed"])
    assert table.exit_code == 0 and f"ls-{tag}-0" in table.stdout
    bad = cli.invoke(app, ["ls", "--label", "nocolon"])
    assert bad.exit_code == 2


def test_watch_follows_a_workflow_to_its_end(cli: CliRunner, tmp_path: Path) -> None:
    wid = "cli-watch-" + os.urandom(3).hex()
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: w\nid: {wid}\nsteps:\n  - {{id: nap, task: demo.sleep, "
                  "input: {seconds: 0.5}}\n")
    assert cli.invoke(app, ["submit", str(wf)]).exit_code == 0
    watched = cli.invoke(app, ["watch", wid])
    assert watched.exit_code == 0, watched.output
    assert "completed" in watched.stdout and "nap" in watched.stdout
    failing = tmp_path / "bad.yaml"
    failing.write_text(f"name: w\nid: {wid}-bad\nsteps:\n  - {{id: boom, task: demo.fail}}\n")
    assert cli.invoke(app, ["submit", str(failing)]).exit_code == 0
    assert cli.invoke(app, ["watch", f"{wid}-bad"]).exit_code == 1


def test_verify_checks_the_promises_of_stored_workflows(cli: CliRunner) -> None:
    created = _submit_json(cli, str(EXAMPLES / "hello.yaml"))
    _wait_state(cli, created.id, {"completed"})
    sound = cli.invoke(app, ["verify", created.id])
    assert sound.exit_code == 0, sound.output
    assert sound.stdout.strip() == "1 workflows checked, 0 violations"
    bad = cli.invoke(app, ["verify", created.id, "never-submitted", "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout) == {"checked": 2, "violations": [
        {"workflow_id": "never-submitted", "promise": 1, "message": "accepted but not stored"},
        {"workflow_id": "never-submitted", "promise": 3, "message": "no events"}],
        "not_started": []}
