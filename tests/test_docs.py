"""Every example in the README and docs is checked against the code it describes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from contracts.models import TaskStep, WorkflowConfig
from contracts.subjects import Subjects
from natsflow.cli import app
from natsflow.dev import DEMO_WORKFLOW, demo_curl

pytest_plugins = ["pytester"]  # the testing doc's examples run as a user's test files

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
SUBJECTS_DOC = (ROOT / "docs" / "subjects.md").read_text()
STEPS_DOC = (ROOT / "docs" / "steps.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _natsflow_commands(text: str) -> list[list[str]]:
    """Every ``natsflow ...`` command line in the sh blocks, as argv after ``natsflow``."""
    commands = []
    for block in _blocks(text, "sh"):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:3] == ["uv", "run", "natsflow"]:
                commands.append(argv[3:])
    return commands


def _parses(argv: list[str]) -> None:
    group = typer.main.get_command(app)
    name, *args = argv
    command = group.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"natsflow has no command {name!r}"
    # Raises click's UsageError for an unknown option or a missing argument.
    command.make_context(name, args)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=str)
def test_examples_are_valid_workflows(path: Path) -> None:
    config = WorkflowConfig.model_validate(yaml.safe_load(path.read_text()))
    tasks = {s.task for s in config.steps if isinstance(s, TaskStep)}
    assert tasks <= {"demo.echo", "demo.add", "demo.sleep", "demo.flaky", "demo.noop",
                     "demo.fail", "demo.count",
                     "warehouse.reserve", "warehouse.pack"}  # examples/faststream_app.py


@pytest.mark.parametrize("block", _blocks(STEPS_DOC, "yaml"), ids=lambda b: b.split("\n")[0])
def test_every_workflow_in_the_language_doc_is_valid(block: str) -> None:
    config = WorkflowConfig.model_validate(yaml.safe_load(block))
    assert config.steps


def test_hello_example_is_the_demo_workflow() -> None:
    assert yaml.safe_load((ROOT / "examples" / "hello.yaml").read_text()) == DEMO_WORKFLOW


def test_readme_curl_is_what_dev_prints_and_a_valid_workflow() -> None:
    curls = [line for block in _blocks(README, "sh") for line in block.splitlines()
             if line.startswith("curl ")]
    assert curls == [demo_curl("http://127.0.0.1:8000")]
    body = shlex.split(curls[0])[-1]
    WorkflowConfig.model_validate(json.loads(body))


def test_readme_yaml_is_a_valid_workflow() -> None:
    blocks = _blocks(README, "yaml")
    assert blocks
    for block in blocks:
        WorkflowConfig.model_validate(yaml.safe_load(block))


def test_readme_python_runs() -> None:
    blocks = _blocks(README, "python")
    assert blocks
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, "README.md", "exec"), namespace)
        worker = namespace["worker"]
        assert worker.task_types == ["billing.charge"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("doc", "at_least"), [("README.md", 5), ("docs/cli.md", 5),
                                              ("docs/operations.md", 3),
                                              ("docs/guarantees.md", 4),
                                              ("docs/triggers.md", 5)])
def test_documented_commands_exist(doc: str, at_least: int) -> None:
    text = (ROOT / doc).read_text()
    commands = _natsflow_commands(text)
    assert len(commands) >= at_least
    for argv in commands:
        _parses(argv)
    help_text = CliRunner().invoke(app, ["--help"]).stdout
    for name in {argv[0] for argv in commands}:
        assert name in help_text


def test_readme_test_command_is_what_ci_runs() -> None:
    assert "uv run pytest" in _blocks(README, "sh")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if "pytest" in line] == ["uv run pytest"]


def test_cli_doc_error_example_is_real(tmp_path: Path) -> None:
    (expected,) = [b for b in _blocks(CLI_DOC, "text") if b.startswith("error[")]
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\nsteps:\n  - {id: a, task: demo.echo, depends_on: [ghost]}\n")
    result = CliRunner().invoke(app, ["submit", str(path)])
    assert result.exit_code == 2
    assert result.stderr == expected


def test_subjects_doc_matches_the_code() -> None:
    s = Subjects("natsflow")
    rows = re.findall(r"^\| `(s\.[^`]+)` \| `([^`]+)` \|", SUBJECTS_DOC, flags=re.M)
    assert len(rows) >= 20
    for expr, name in rows:
        assert eval(expr, {"s": s}) == name, expr
    # Every public name-building member of Subjects is documented.
    documented = {re.match(r"s\.(\w+)", expr).group(1) for expr, _ in rows}  # type: ignore[union-attr]
    members = {n for n in vars(Subjects) if not n.startswith("_")}
    wildcards = {"inbox_subjects", "engine_filters", "timer_filter", "all_tasks",
                 "all_cancels", "all_events", "all_dlq", "all_webhooks", "all_limits",
                 "kind_of", "is_internal", "prefix", "schedule_filter",
                 "engine_partition_filters", "timer_partition_filter", "engine_consumers",
                 "timer_consumers"}
    assert members - wildcards <= documented


def test_compose_runs_every_service_from_the_image() -> None:
    """Both profiles of compose.yaml (tests/test_compose.py checks them with
    docker-compose itself): every natsflow command parses, on healthy NATS."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    nats = {n: s for n, s in services.items() if s["image"].startswith("nats:")}
    assert set(nats) == {"nats", "nats-1", "nats-2", "nats-3"}
    assert {"-js", "-sd", "/data", "-m", "8222"} <= set(nats["nats"]["command"])
    for node in nats.values():
        assert node["image"].startswith("nats:2.1")
        assert "/healthz" in " ".join(node["healthcheck"]["test"])
    ours = {n: s for n, s in services.items() if n not in nats}
    commands = sorted(s["command"][0] for s in ours.values())
    assert commands == sorted(["orchestrator", "index", "gateway", "worker"] * 2
                              + ["orchestrator", "gateway"])
    for name, svc in ours.items():
        assert svc["build"] == "."
        assert svc["depends_on"], name
        assert all(d["condition"] == "service_healthy" for d in svc["depends_on"].values())
        servers = svc["environment"]["NATS_URL"].split(",")
        assert {u.removeprefix("nats://").split(":")[0] for u in servers} \
            <= set(svc["depends_on"]), name
        _parses(svc["command"])
    assert services["worker"]["command"] == ["worker", "natsflow.demo:worker"]
    assert "8000:8000" in services["gateway"]["ports"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["natsflow"]' in dockerfile
    assert "uv sync --frozen --no-dev" in dockerfile


def test_the_image_holds_every_package_of_the_wheel() -> None:
    """A package the wheel ships but the Dockerfile does not copy breaks the image at import."""
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = re.findall(r"^COPY (\S+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M)
    assert sorted(packages) == sorted(copied)


EXPR_DOC = (ROOT / "docs" / "expressions.md").read_text()


def _expr_rows(header: str) -> list[tuple[str, str, str]]:
    section = EXPR_DOC[EXPR_DOC.index(f"| {header} | context | result |"):]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = re.findall(r"`((?:[^`])*)`", line.replace("\\|", "|"))
        rows.append((cells[0], cells[1], cells[2]))
    return rows


@pytest.mark.parametrize(("expression", "context", "result"), _expr_rows("expression"))
def test_expression_examples_evaluate_as_documented(expression: str, context: str,
                                                     result: str) -> None:
    from contracts.language.expr import evaluate

    assert evaluate(expression, json.loads(context)) == json.loads(result)


@pytest.mark.parametrize(("template", "context", "result"), _expr_rows("template"))
def test_template_examples_render_as_documented(template: str, context: str,
                                                result: str) -> None:
    from contracts.language.expr import render

    assert render(json.loads(template), json.loads(context)) == json.loads(result)


def test_expression_doc_has_enough_examples() -> None:
    assert len(_expr_rows("expression")) >= 10 and len(_expr_rows("template")) >= 4


TESTING_DOC = (ROOT / "docs" / "testing.md").read_text()


def test_the_testing_doc_examples_pass_as_a_users_test_files(pytester: pytest.Pytester) -> None:
    """Each Python block of docs/testing.md is a test file of a user's project."""
    blocks = _blocks(TESTING_DOC, "python")
    assert len(blocks) >= 4
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n")
    for i, block in enumerate(blocks):
        pytester.makepyfile(**{f"test_doc_{i}": block})
    tests = sum(len(re.findall(r"^(?:async )?def test_", b, flags=re.M)) for b in blocks)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=tests)
