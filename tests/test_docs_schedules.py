"""Every example of docs/schedules.md runs: its schedules are created on a real
orchestrator, its Python runs, and its ``natsflow schedules`` commands run in order."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from contracts.schedules import Schedule
from natsflow.cli import app
from natsflow.client import NatsflowClient
from natsflow.schedule_client import ScheduleClient
from transport.connect import NatsSettings

DOC = (Path(__file__).parent.parent / "docs" / "schedules.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC, flags=re.S | re.M)


def test_the_python_example_runs() -> None:
    (block,) = _blocks("python")
    exec(compile(block, "docs/schedules.md", "exec"), {})


async def test_the_schedules_and_commands_of_the_doc_run(
        engine: object, client: NatsflowClient, settings: NatsSettings,
        tmp_path: Path) -> None:
    nightly, heartbeat = (yaml.safe_load(b) for b in _blocks("yaml"))
    await client.put_definition("report", {"name": "report", "steps": [
        {"id": "r", "kind": "transform", "output": "${input.scope}"}]})
    info = await ScheduleClient(client).create(Schedule.model_validate(heartbeat))
    assert len(info.next_fire_times) == 5
    assert all(t.second == 30 and t.minute % 5 == 0 for t in info.next_fire_times)
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(nightly))

    commands = [shlex.split(line, comments=True) for block in _blocks("sh")
                for line in block.splitlines()]
    assert [c[4] for c in commands] == ["create", "ls", "get", "pause", "unpause",
                                        "trigger", "backfill", "delete"]
    env = {"NATS_URL": ",".join(settings.servers), "NATSFLOW_PREFIX": settings.prefix}

    def run_all() -> list[str]:
        outputs = []
        runner = CliRunner()
        for argv in commands:
            assert argv[:3] == ["uv", "run", "natsflow"]
            args = [a if a != "nightly.yaml" else str(tmp_path / a) for a in argv[3:]]
            result = runner.invoke(app, args, env=env)
            assert result.exit_code == 0, (args, result.output)
            outputs.append(result.output)
        return outputs

    out = await asyncio.to_thread(run_all)
    assert "created" in out[0] and "nightly-report" in out[1]
    assert "warehouse migration" in out[3]
    assert "fired" in out[5] and "7 fire times queued" in out[6]
    assert "deleted" in out[7]
