"""The workflow engine, pure: unit tests and hypothesis state-machine properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from contracts.errors import ErrorInfo
from contracts.messages import TaskFailed, TaskProgress, TaskSucceeded
from contracts.models import (
    STEP_IN_FLIGHT,
    WORKFLOW_TERMINAL,
    EventType,
    StepState,
    WorkflowConfig,
    WorkflowState,
)
from orchestrator.engine import decide
from orchestrator.records import (
    CreateWorkflow,
    EventEffect,
    ResultInput,
    StartWorkflow,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WorkflowInput,
    WorkflowRecord,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def config(steps: list[dict[str, Any]], **kw: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": "t", "id": "w", "steps": steps, **kw})


def ok(step: str, attempt: int = 1, output: Any = None) -> ResultInput:
    return ResultInput(result=TaskSucceeded(workflow_id="w", step_id=step, attempt=attempt,
                                            output=output))


def fail(step: str, attempt: int = 1, *, retryable: bool = True, code: str = "boom"
         ) -> ResultInput:
    return ResultInput(result=TaskFailed(workflow_id="w", step_id=step, attempt=attempt,
                                         error=ErrorInfo(code=code, message="x",
                                                         retryable=retryable)))


def run(cfg: WorkflowConfig, inputs: list[WorkflowInput]) -> tuple[WorkflowRecord, list[Any]]:
    record = None
    effects: list[Any] = []
    for i, inp in enumerate([CreateWorkflow(config=cfg, fingerprint="f"), *inputs]):
        d = decide(record, inp, T0 + timedelta(seconds=i))
        if d.record is not None:
            record = d.record
            effects.extend(d.effects)
    assert record is not None
    return record, effects


def events(effects: list[Any]) -> list[str]:
    return [e.event.type.value for e in effects if isinstance(e, EventEffect)]


def test_chain_passes_outputs_and_completes() -> None:
    cfg = config([{"id": "a", "task": "t", "input": {"x": "${input.n}"}},
                  {"id": "b", "task": "t", "depends_on": ["a"],
                   "input": {"y": "${steps.a.output.v}", "s": "n=${input.n}"}}],
                 input={"n": 2})
    rec, eff = run(cfg, [ok("a", output={"v": 7}), ok("b", output={"z": 1})])
    tasks = [e.task for e in eff if isinstance(e, TaskEffect)]
    assert [t.input for t in tasks] == [{"x": 2}, {"y": 7, "s": "n=2"}]
    assert tasks[1].idempotency_key == "w:b:1"
    assert rec.status.state == WorkflowState.COMPLETED
    assert rec.status.output == {"b": {"z": 1}}
    assert events(eff)[-1] == "workflow.completed"


def test_retry_with_backoff_arms_a_timer_then_redispatches() -> None:
    cfg = config([{"id": "a", "task": "t",
                   "retry": {"max_attempts": 3, "initial_interval": 5}}])
    rec, eff = run(cfg, [fail("a")])
    step = rec.status.step("a")
    assert step.state == StepState.RETRYING and step.attempts == 1
    timers = [e.timer for e in eff if isinstance(e, TimerEffect)]
    assert timers[-1].purpose == "retry" and timers[-1].attempt == 2
    assert timers[-1].due == T0 + timedelta(seconds=1 + 5)
    rec2, _eff2 = run(cfg, [fail("a"), timers[-1], ok("a", attempt=2)])
    assert rec2.status.state == WorkflowState.COMPLETED
    assert rec2.status.step("a").attempts == 2


def test_zero_backoff_redispatches_in_the_same_transition() -> None:
    cfg = config([{"id": "a", "task": "t", "retry": {"max_attempts": 2,
                                                    "initial_interval": 0}}])
    rec, _eff = run(cfg, [fail("a")])
    assert rec.status.step("a").state == StepState.DISPATCHED
    assert rec.status.step("a").attempts == 2


def test_non_retryable_and_exhausted_attempts_fail_the_workflow_naming_the_step() -> None:
    cfg = config([{"id": "a", "task": "t", "retry": {"max_attempts": 5}},
                  {"id": "b", "task": "t"}])
    rec, _eff = run(cfg, [fail("a", retryable=False)])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.error is not None and rec.status.error.step == "a"
    assert rec.status.step("b").state == StepState.CANCELLED
    cfg2 = config([{"id": "a", "task": "t", "retry": {"max_attempts": 2, "initial_interval": 0,
                                                     "non_retryable_codes": ["fatal"]}}])
    rec2, _ = run(cfg2, [fail("a", code="fatal")])
    assert rec2.status.state == WorkflowState.FAILED and rec2.status.step("a").attempts == 1


def test_timeout_timer_fails_the_attempt() -> None:
    cfg = config([{"id": "a", "task": "t", "timeout": 3}])
    _rec, eff = run(cfg, [])
    timer = next(e.timer for e in eff if isinstance(e, TimerEffect))
    assert timer.purpose == "timeout"
    rec2, eff2 = run(cfg, [timer])
    assert [e.notice.step_id for e in eff2 if e.kind == "cancel"] == ["a"]
    assert rec2.status.state == WorkflowState.FAILED
    assert rec2.status.step("a").error is not None
    assert rec2.status.step("a").error.code == "step-timeout"
    # A result that beat the timer makes the timer a no-op.
    rec3, _ = run(cfg, [ok("a"), timer])
    assert rec3.status.state == WorkflowState.COMPLETED


def test_stop_cancels_running_steps_and_ends_stopped() -> None:
    cfg = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]}])
    rec, eff = run(cfg, [StopWorkflow()])
    assert rec.status.state == WorkflowState.STOPPING
    assert any(e.kind == "cancel" for e in eff)
    rec2, _eff2 = run(cfg, [StopWorkflow(), fail("a", code="cancelled", retryable=False)])
    assert rec2.status.state == WorkflowState.STOPPED
    assert rec2.status.step("b").state == StepState.CANCELLED
    grace = next(e.timer for e in eff if isinstance(e, TimerEffect))
    rec3, _ = run(cfg, [StopWorkflow(), grace])
    assert rec3.status.state == WorkflowState.STOPPED


def test_stop_of_a_finished_workflow_is_refused() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    rec, _ = run(cfg, [ok("a")])
    d = decide(rec, StopWorkflow(), T0)
    assert d.record is None and d.reply.error is not None
    assert d.reply.error.code == "already-finished"


def test_created_workflow_waits_for_start() -> None:
    cfg = config([{"id": "a", "task": "t"}], start=False)
    rec, eff = run(cfg, [])
    assert rec.status.state == WorkflowState.CREATED and not any(
        isinstance(e, TaskEffect) for e in eff)
    rec2, _ = run(cfg, [StartWorkflow(), StartWorkflow()])
    assert rec2.status.state == WorkflowState.RUNNING
    assert rec2.status.step("a").attempts == 1


def test_resubmit_and_conflict() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    rec, _ = run(cfg, [])
    same = decide(rec, CreateWorkflow(config=cfg, fingerprint="f"), T0)
    assert same.record is None and same.reply.created is False and same.reply.error is None
    other = decide(rec, CreateWorkflow(config=cfg, fingerprint="g"), T0)
    assert other.reply.error is not None and other.reply.error.code == "id-conflict"


def test_records_round_trip_through_their_stored_form() -> None:
    # The shell stores records with exclude_none (smaller KV values): nothing may be lost,
    # not even JSON nulls inside inputs and outputs.
    cfg = config([{"id": "a", "task": "t", "input": {"n": None}},
                  {"id": "b", "task": "t", "depends_on": ["a"]}], input={"x": None, "y": [None]})
    rec, _ = run(cfg, [ok("a", output={"z": None})])
    stored = rec.stored_form()
    assert len(stored) < len(rec.model_dump_json())
    assert WorkflowRecord.model_validate_json(stored) == rec
    assert json.loads(stored) == json.loads(rec.model_dump_json(exclude_none=True))


def test_a_stored_form_builds_event_and_task_entries_around_their_message_bodies() -> None:
    cfg = config([{"id": "a", "task": "t", "input": {"n": None}},
                  {"id": "b", "task": "t", "depends_on": ["a"]}])
    rec, _ = run(cfg, [ok("a", output={"z": None})])
    sent = [e for e in rec.outbox if isinstance(e, EventEffect | TaskEffect)]
    assert {type(e) for e in sent} == {EventEffect, TaskEffect}
    bodies = {id(e): (e.event if isinstance(e, EventEffect) else e.task).model_dump_json(
        ).encode() for e in sent}  # as the shell publishes them: nulls and all
    stored = rec.stored_form(None, bodies)
    assert all(body in stored for body in bodies.values())
    assert WorkflowRecord.model_validate_json(stored) == rec
    assert WorkflowRecord.model_validate_json(rec.stored_form()) == rec


def test_a_stored_form_reuses_its_predecessors_config_json_only_for_the_same_config() -> None:
    cfg = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]}])
    before, _ = run(cfg, [])
    before.stored_form()
    after = decide(before, ResultInput(result=TaskSucceeded(
        workflow_id="w", step_id="a", attempt=1, output=1)), T0).record
    assert after is not None and after.config is before.config
    assert WorkflowRecord.model_validate_json(after.stored_form(before)) == after
    # A record with another config never takes the predecessor's JSON.
    other = after.model_copy(update={"config": cfg.model_copy(update={"name": "renamed"})})
    assert WorkflowRecord.model_validate_json(other.stored_form(before)).config.name == "renamed"


def test_output_too_large_fails_the_step() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    rec, _ = run(cfg, [ok("a", output={"x": "y" * 200_000})])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.step("a").error is not None
    assert rec.status.step("a").error.code == "output-too-large"


def test_progress_marks_running_and_unknown_workflow_inputs_are_ignored() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    prog = ResultInput(result=TaskProgress(workflow_id="w", step_id="a", attempt=1,
                                           progress={"pct": 50}))
    rec, eff = run(cfg, [prog])
    assert rec.status.step("a").state == StepState.RUNNING
    assert rec.status.step("a").progress == {"pct": 50}
    assert events(eff)[-2:] == ["step.started", "step.progress"]
    assert decide(None, ok("a"), T0).record is None
    missing = decide(None, StopWorkflow(), T0)
    assert missing.reply.error is not None and missing.reply.error.code == "workflow-not-found"


# -- properties ------------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> WorkflowConfig:
    n = draw(st.integers(1, 7))
    steps = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        steps.append({"id": f"s{i}", "task": "t", "depends_on": [f"s{d}" for d in sorted(deps)],
                      "retry": {"max_attempts": draw(st.integers(1, 3)),
                                "initial_interval": draw(st.sampled_from([0, 1]))}})
    return config(steps)


class EngineMachine(RuleBasedStateMachine):
    """Random results, timers, duplicates and stops against one workflow."""

    @initialize(cfg=dags())
    def create(self, cfg: WorkflowConfig) -> None:
        self.cfg = cfg
        self.history: list[WorkflowInput] = [CreateWorkflow(config=cfg, fingerprint="f")]
        self.record: WorkflowRecord | None = None
        self.delivered: list[WorkflowInput] = []
        self.timers: list[TimerFired] = []
        self.seqs: list[int] = []
        self.clock = 0
        self.terminal_events = 0
        self.apply(self.history[0], record_history=False)

    def apply(self, inp: WorkflowInput, *, record_history: bool = True) -> None:
        if record_history:
            self.history.append(inp)
        before = self.record
        snapshot = before.model_copy(deep=True) if before is not None else None
        self.clock += 1
        d = decide(before, inp, T0 + timedelta(seconds=self.clock))
        assert before == snapshot, "decide never changes the record it was given"
        if before is not None and before.status.state in WORKFLOW_TERMINAL:
            assert d.record is None, "a terminal workflow absorbs every input"
        if d.record is None:
            return
        new = d.record
        for eff in d.effects:
            if isinstance(eff, TaskEffect):
                step_cfg = new.config.step(eff.task.step_id)
                for dep in step_cfg.depends_on:
                    assert new.status.step(dep).state == StepState.SUCCEEDED, (
                        "no step starts before its dependencies succeeded")
                assert eff.task.attempt <= step_cfg.retry.max_attempts
            elif isinstance(eff, EventEffect):
                self.seqs.append(eff.event.seq)
                if eff.event.type in (EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED,
                                      EventType.WORKFLOW_STOPPED):
                    self.terminal_events += 1
            elif isinstance(eff, TimerEffect):
                self.timers.append(eff.timer)
        self.record = new
        self.delivered.append(inp)

    def in_flight(self) -> list[tuple[str, int]]:
        assert self.record is not None
        return [(s.id, s.attempts) for s in self.record.status.steps if s.state in STEP_IN_FLIGHT]

    @precondition(lambda self: bool(self.in_flight()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "retryable", "fatal", "progress"]))
    def result(self, data: st.DataObject, outcome: str) -> None:
        step, attempt = data.draw(st.sampled_from(self.in_flight()))
        if outcome == "ok":
            self.apply(ok(step, attempt, output={"step": step}))
        elif outcome == "progress":
            self.apply(ResultInput(result=TaskProgress(workflow_id="w", step_id=step,
                                                       attempt=attempt, progress=1)))
        else:
            self.apply(fail(step, attempt, retryable=outcome == "retryable"))

    @precondition(lambda self: bool(self.timers))
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        self.apply(data.draw(st.sampled_from(self.timers)))

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        before = self.record
        inp = data.draw(st.sampled_from(self.delivered))
        if isinstance(inp, ResultInput | CreateWorkflow | StartWorkflow):
            self.apply(inp)
            if not isinstance(inp, ResultInput) or inp.result.kind != "progress":
                assert self.record is before or self.record == before, "duplicates change nothing"

    @rule()
    def stop(self) -> None:
        self.apply(StopWorkflow())

    @invariant()
    def seq_is_gap_free(self) -> None:
        assert self.seqs == list(range(1, len(self.seqs) + 1))
        assert self.terminal_events <= 1

    @invariant()
    def attempts_bounded(self) -> None:
        if self.record is None:
            return
        for s in self.record.status.steps:
            assert s.attempts <= self.record.config.step(s.id).retry.max_attempts

    @invariant()
    def stop_wins(self) -> None:
        if self.record is None:
            return
        if any(isinstance(i, StopWorkflow) for i in self.history):
            assert self.record.status.state in (WorkflowState.STOPPING, WorkflowState.STOPPED,
                                                WorkflowState.COMPLETED, WorkflowState.FAILED)

    def teardown(self) -> None:
        # Same history, same state: replay from scratch.
        if getattr(self, "record", None) is None:
            return
        record = None
        for i, inp in enumerate(self.history):
            d = decide(record, inp, T0 + timedelta(seconds=i + 1))
            record = d.record or record
        assert record is not None and self.record is not None
        assert record.status.state == self.record.status.state
        assert [s.state for s in record.status.steps] == [
            s.state for s in self.record.status.steps]


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("stop_first", [False, True])
@settings(max_examples=100, deadline=None)
@given(cfg=dags(), outcomes=st.lists(st.booleans(), max_size=30))
def test_every_finite_run_reaches_one_terminal_state(
        stop_first: bool, cfg: WorkflowConfig, outcomes: list[bool]) -> None:
    record, _ = run(cfg, [StopWorkflow()] if stop_first else [])
    outcome_iter = iter(outcomes)
    for clock in range(10, 510):
        if record.status.state in WORKFLOW_TERMINAL:
            break
        flights = [(s.id, s.attempts) for s in record.status.steps if s.state in STEP_IN_FLIGHT]
        retrying = [s for s in record.status.steps if s.state == StepState.RETRYING]
        inp: WorkflowInput
        if flights:
            sid, att = flights[0]
            inp = ok(sid, att) if next(outcome_iter, True) else fail(sid, att)
        elif retrying:
            s = retrying[0]
            inp = TimerFired(workflow_id="w", step_id=s.id, attempt=s.attempts + 1,
                             purpose="retry", due=T0)
        else:
            inp = TimerFired(workflow_id="w", purpose="stop-grace", due=T0)
        record = decide(record, inp, T0 + timedelta(seconds=clock)).record or record
    assert record.status.state in WORKFLOW_TERMINAL


def test_a_result_ahead_of_its_dispatch_is_early_not_stale() -> None:
    """Tasks leave with the record's write: a copy older than that write sees a result
    for an attempt it has not dispatched, or no workflow at all. Both are "early" (handed
    back), never dropped; a result for an attempt that is over stays stale."""
    cfg = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]}])
    assert decide(None, ok("a"), T0).reply.early
    rec, _ = run(cfg, [])
    ahead = decide(rec, ok("b"), T0)  # b is not dispatched yet in this copy
    assert ahead.record is None and ahead.reply.early
    retried = decide(rec, ok("a", attempt=2), T0)
    assert retried.record is None and retried.reply.early
    done, _ = run(cfg, [ok("a")])
    again = decide(done, ok("a"), T0)  # a duplicate of a result already applied
    assert again.record is None and not again.reply.early
    finished, _ = run(cfg, [ok("a"), ok("b")])
    late = decide(finished, ok("b", attempt=3), T0)  # the workflow is over
    assert late.record is None and not late.reply.early


def test_an_item_outputs_stored_entry_is_built_around_the_json_it_was_measured_by() -> None:
    from orchestrator.records import PutOutputEffect

    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2]", "step": {"task": "t"}}])
    output = {"s": 'é "q"', "n": None, "f": 0.1}
    rec, _ = run(cfg, [ok("m[0]", output=output)])
    puts = [e for e in rec.outbox if isinstance(e, PutOutputEffect)]
    assert [p.output for p in puts] == [output]
    put = puts[0]
    # The engine kept the JSON it measured the output by (the outputs bucket's message
    # is made of it, Router), and the stored entry is built around it.
    body = put.output_json()
    assert body == json.dumps(output, separators=(",", ":")).encode()
    stored = rec.stored_form(None, {id(put): body})
    assert body in stored
    back = WorkflowRecord.model_validate_json(stored)
    assert back == rec and put in back.outbox
    assert back.outbox[back.outbox.index(put)].output_json() == body  # made again the same
    assert PutOutputEffect(key=put.key, output=output) == put  # the kept JSON is not state
