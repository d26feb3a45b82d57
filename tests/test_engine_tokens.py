"""Result tokens in the pure engine: sent with every attempt, required of every report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.messages import TaskProgress, TaskSucceeded
from contracts.models import SHOWN, StepState, WorkflowConfig, WorkflowState, WorkflowStatus
from orchestrator.engine import EngineSettings, decide
from orchestrator.records import (
    CreateWorkflow,
    NotifyParentEffect,
    ResultInput,
    TaskEffect,
    WorkflowDecision,
    WorkflowInput,
    WorkflowRecord,
)
from orchestrator.tokens import attempt_token

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"k" * 32
SETTINGS = EngineSettings(result_key=KEY)


def _config(steps: list[dict[str, Any]], **kw: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": "t", "id": "w", "steps": steps, **kw})


def _ok(step: str, token: str | None, attempt: int = 1, output: Any = "real") -> ResultInput:
    return ResultInput(result=TaskSucceeded(workflow_id="w", step_id=step, attempt=attempt,
                                            output=output, token=token))


def _apply(record: WorkflowRecord | None, inp: WorkflowInput, i: int,
           settings: EngineSettings = SETTINGS) -> WorkflowDecision:
    return decide(record, inp, T0 + timedelta(seconds=i), settings)


def _started(cfg: WorkflowConfig) -> tuple[WorkflowRecord, list[TaskEffect]]:
    d = _apply(None, CreateWorkflow(config=cfg, fingerprint="f"), 0)
    assert d.record is not None
    return d.record, [e for e in d.effects if isinstance(e, TaskEffect)]


def test_each_attempt_gets_a_token_its_status_keeps_and_its_report_must_echo() -> None:
    record, (task,) = _started(_config([{"id": "a", "task": "t"}]))
    token = task.task.token
    assert token == attempt_token(KEY, "w", "a", 1) and len(token) >= 22
    assert record.status.step("a").token == token
    for forged in (None, "", "x" * 22, attempt_token(KEY, "w", "a", 2),
                   attempt_token(b"other key".ljust(32), "w", "a", 1)):
        refused = _apply(record, _ok("a", forged, output="forged"), 1)
        assert refused.record is None
        assert refused.reply.refused is not None
        assert refused.reply.refused.code == "forged-result"
    done = _apply(record, _ok("a", token), 2)
    assert done.record is not None and done.record.status.state == WorkflowState.COMPLETED
    assert done.record.status.step("a").output == "real"


def test_progress_and_reports_for_other_attempts_need_their_token_too() -> None:
    record, _ = _started(_config([{"id": "a", "task": "t", "heartbeat_timeout": 5}]))
    beat = ResultInput(result=TaskProgress(workflow_id="w", step_id="a", attempt=1,
                                           progress={"pct": 50}))
    assert _apply(record, beat, 1).reply.refused is not None
    # An attempt not dispatched yet (or long gone) is checked against what the key gives.
    assert _apply(record, _ok("a", "nope", attempt=2), 1).reply.refused is not None
    early = _apply(record, _ok("a", attempt_token(KEY, "w", "a", 2), attempt=2), 1)
    assert early.reply.refused is None and early.reply.early
    # A report for a workflow that does not exist yet, likewise.
    assert _apply(None, _ok("a", "nope"), 1).reply.refused is not None
    assert _apply(None, _ok("a", attempt_token(KEY, "w", "a", 1)), 1).reply.early


def test_map_items_and_child_workflows_carry_tokens() -> None:
    record, tasks = _started(_config(
        [{"id": "m", "kind": "map", "items": "[1, 2]", "step": {"task": "t"}}]))
    assert [t.task.token for t in tasks] == [attempt_token(KEY, "w", "m[0]", 1),
                                             attempt_token(KEY, "w", "m[1]", 1)]
    assert _apply(record, _ok("m[0]", "nope"), 1).reply.refused is not None
    took = _apply(record, _ok("m[0]", tasks[0].task.token), 1)
    assert took.reply.refused is None and took.record is not None
    # A child workflow reports to its parent's step with that step's token.
    child = WorkflowConfig.model_validate({
        "name": "c", "id": "w-kid-1", "steps": [{"id": "x", "task": "t"}],
        "parent": {"workflow_id": "p", "step_id": "kid", "attempt": 1}})
    rec, (ctask,) = _started(child)
    finished = decide(rec, ResultInput(result=TaskSucceeded(
        workflow_id="w-kid-1", step_id="x", attempt=1, token=ctask.task.token)),
        T0 + timedelta(seconds=1), SETTINGS)
    (notify,) = [e for e in finished.effects if isinstance(e, NotifyParentEffect)]
    assert notify.result.token == attempt_token(KEY, "p", "kid", 1)


def test_the_same_history_gives_the_same_tokens_and_state() -> None:
    cfg = _config([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"],
                                              "retry": {"max_attempts": 3}}])

    def replay() -> tuple[str, list[str | None]]:
        record, (first,) = _started(cfg)
        tokens: list[str | None] = [first.task.token]
        d = _apply(record, _ok("a", first.task.token), 1)
        assert d.record is not None
        tokens += [e.task.token for e in d.effects if isinstance(e, TaskEffect)]
        return d.record.model_dump_json(), tokens

    assert replay() == replay()


def test_without_a_key_nothing_is_sent_and_nothing_refused() -> None:
    d = decide(None, CreateWorkflow(config=_config([{"id": "a", "task": "t"}]),
                                    fingerprint="f"), T0)
    assert d.record is not None
    (task,) = [e for e in d.effects if isinstance(e, TaskEffect)]
    assert task.task.token is None and d.record.status.step("a").token is None
    done = decide(d.record, _ok("a", None), T0 + timedelta(seconds=1))
    assert done.record is not None
    assert done.record.status.step("a").state == StepState.SUCCEEDED


def test_a_status_shown_to_a_client_leaves_the_tokens_out() -> None:
    record, _ = _started(_config([{"id": "a", "task": "t"}]))
    stored = record.status.model_dump_json()
    shown = record.status.model_dump_json(context={SHOWN: True})
    assert '"token"' in stored and '"token"' not in shown
    assert "token" not in WorkflowStatus.model_json_schema()["$defs"]["StepStatus"][
        "properties"]
