"""The engine's step kinds, conditions, failure policy and compensation, pure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_engine import T0, config, events, fail, ok, run

from contracts.errors import InvalidGraph
from contracts.language.expr import ExpressionError
from contracts.messages import TaskProgress
from contracts.models import (
    EVENT_TERMINAL,
    STEP_IN_FLIGHT,
    STEP_TERMINAL,
    WORKFLOW_TERMINAL,
    Event,
    EventType,
    RetryPolicy,
    StepState,
    WorkflowConfig,
    WorkflowState,
)
from natsflow.promises import check_workflow
from orchestrator.engine import MAX_PENDING_SIGNALS, decide
from orchestrator.records import (
    CancelEffect,
    CreateWorkflow,
    EventEffect,
    JoinMapEffect,
    MapJoined,
    NotifyParentEffect,
    PauseWorkflow,
    PutOutputEffect,
    ResultInput,
    ResumeWorkflow,
    SignalWorkflow,
    StartChildEffect,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WorkflowCommandEffect,
    WorkflowDecision,
    WorkflowRecord,
)


def timers(eff: list[Any], purpose: str) -> list[TimerFired]:
    return [e.timer for e in eff if isinstance(e, TimerEffect) and e.timer.purpose == purpose]


def tasks(eff: list[Any]) -> list[Any]:
    return [e.task for e in eff if isinstance(e, TaskEffect)]


def states(rec: Any) -> dict[str, str]:
    return {s.id: s.state.value for s in rec.status.steps}


# -- kinds -----------------------------------------------------------------------------


def test_builtin_kinds_become_tasks_of_reserved_types_with_rendered_fields() -> None:
    cfg = config([
        {"id": "r", "kind": "request", "subject": "svc.${input.region}.quote",
         "payload": {"n": "${input.n}"}, "request_timeout": 2},
        {"id": "h", "kind": "http", "method": "POST", "url": "http://x/${input.n}",
         "body": {"q": "${steps.r.output.price}"}, "expect": [201], "depends_on": ["r"]},
        {"id": "p", "kind": "publish", "subject": "done.${input.region}",
         "payload": "${steps.h.output}", "stream": True, "depends_on": ["h"]},
    ], input={"region": "eu", "n": 3})
    rec, eff = run(cfg, [ok("r", output={"price": 9}), ok("h", output={"id": 1}), ok("p")])
    sent = tasks(eff)
    assert [t.task for t in sent] == ["natsflow.request", "natsflow.http", "natsflow.publish"]
    assert sent[0].input == {"subject": "svc.eu.quote", "payload": {"n": 3}, "headers": {},
                             "timeout": 2.0}
    assert sent[1].input["url"] == "http://x/3" and sent[1].input["body"] == {"q": 9}
    assert sent[1].input["expect"] == [201]
    assert sent[2].input == {"subject": "done.eu", "payload": {"id": 1}, "headers": {},
                             "stream": True}
    assert rec.status.state == WorkflowState.COMPLETED
    assert rec.status.step("r").task == "natsflow.request"


def test_transform_computes_its_output_without_a_worker() -> None:
    cfg = config([
        {"id": "a", "task": "t"},
        {"id": "sum", "kind": "transform", "depends_on": ["a"],
         "output": {"total": "${steps.a.output.items.map(i, i.price).sum()}"
                    if False else "${size(steps.a.output.items)}",
                    "label": "n=${input.n}"}},
    ], input={"n": 1}, output="${steps.sum.output}")
    rec, eff = run(cfg, [ok("a", output={"items": [{"price": 1}, {"price": 2}]})])
    assert len(tasks(eff)) == 1
    assert rec.status.step("sum").output == {"total": 2, "label": "n=1"}
    assert rec.status.output == {"total": 2, "label": "n=1"}
    assert rec.status.state == WorkflowState.COMPLETED


def test_when_false_skips_and_the_skip_propagates_unless_join_any() -> None:
    cfg = config([
        {"id": "a", "task": "t", "when": "input.amount > 100"},
        {"id": "b", "task": "t", "depends_on": ["a"]},
        {"id": "c", "task": "t"},
        {"id": "d", "task": "t", "depends_on": ["a", "c"], "join": "any"},
    ], input={"amount": 5})
    rec, eff = run(cfg, [ok("c"), ok("d")])
    assert states(rec) == {"a": "skipped", "b": "skipped", "c": "succeeded", "d": "succeeded"}
    assert events(eff).count("step.skipped") == 2
    assert [t.step_id for t in tasks(eff)] == ["c", "d"]
    assert rec.status.state == WorkflowState.COMPLETED


def test_switch_runs_the_chosen_branch_and_skips_the_others() -> None:
    cfg = config([
        {"id": "route", "kind": "switch", "value": "input.tier",
         "cases": {"gold": ["vip"], "silver": ["std"]}, "default": ["basic"]},
        {"id": "vip", "task": "t", "depends_on": ["route"]},
        {"id": "std", "task": "t", "depends_on": ["route"]},
        {"id": "basic", "task": "t", "depends_on": ["route"]},
        {"id": "after", "task": "t", "depends_on": ["vip", "std", "basic"], "join": "any"},
    ], input={"tier": "silver"})
    rec, eff = run(cfg, [ok("std"), ok("after")])
    assert states(rec) == {"route": "succeeded", "vip": "skipped", "std": "succeeded",
                           "basic": "skipped", "after": "succeeded"}
    assert rec.status.step("route").output == {"case": "silver", "value": "silver"}
    assert [t.step_id for t in tasks(eff)] == ["std", "after"]
    rec2, _ = run(config(cfg.model_dump()["steps"], input={"tier": "lead"}), [ok("basic")])
    assert rec2.status.step("route").output["case"] == "default"
    assert rec2.status.step("basic").state == StepState.SUCCEEDED


def test_sleep_is_a_durable_timer_that_fires_once() -> None:
    cfg = config([{"id": "nap", "kind": "sleep", "duration": "90s"},
                  {"id": "b", "task": "t", "depends_on": ["nap"]}])
    rec, eff = run(cfg, [])
    (timer,) = timers(eff, "sleep")
    assert timer.due == T0 + timedelta(seconds=90)
    assert rec.status.step("nap").state == StepState.WAITING
    rec2, eff2 = run(cfg, [timer, timer])
    assert rec2.status.step("nap").state == StepState.SUCCEEDED
    assert events(eff2).count("step.succeeded") == 1
    assert [t.step_id for t in tasks(eff2)] == ["b"]


def test_sleep_until_a_time_and_from_an_expression() -> None:
    cfg = config([{"id": "nap", "kind": "sleep", "until": "${input.at}"}],
                 input={"at": (T0 + timedelta(hours=1)).isoformat()})
    _rec, eff = run(cfg, [])
    assert timers(eff, "sleep")[0].due == T0 + timedelta(hours=1)
    past = config([{"id": "nap", "kind": "sleep", "duration": "${input.s}"}], input={"s": 0})
    rec, _ = run(past, [])
    assert rec.status.state == WorkflowState.COMPLETED
    # Known only at run time (a literal "tomorrow" is refused on arrival).
    bad = config([{"id": "nap", "kind": "sleep", "until": "${input.at}"}],
                 input={"at": "tomorrow"})
    rec3, _ = run(bad, [])
    assert rec3.status.state == WorkflowState.FAILED
    assert rec3.status.step("nap").error is not None
    assert rec3.status.step("nap").error.field == "until"


def test_wait_takes_a_signal_and_a_signal_before_the_wait_is_kept() -> None:
    cfg = config([{"id": "a", "task": "t"},
                  {"id": "approve", "kind": "wait", "signal": "approval", "depends_on": ["a"]}],
                 output="${steps.approve.output}")
    early = SignalWorkflow(name="approval", payload={"ok": True})
    rec, eff = run(cfg, [early])
    assert [s.name for s in rec.status.signals] == ["approval"]
    assert "signal.received" in events(eff)
    rec2, _ = run(cfg, [early, ok("a")])
    assert rec2.status.state == WorkflowState.COMPLETED
    assert rec2.status.output == {"ok": True} and rec2.status.signals == []
    rec3, _ = run(cfg, [ok("a"), SignalWorkflow(name="other"), early])
    assert rec3.status.step("approve").output == {"ok": True}
    assert [s.name for s in rec3.status.signals] == ["other"]


def test_signals_to_finished_or_flooded_workflows_are_refused() -> None:
    cfg = config([{"id": "w", "kind": "wait", "signal": "go"}])
    rec, _ = run(cfg, [SignalWorkflow(name="go")])
    done = decide(rec, SignalWorkflow(name="go"), T0)
    assert done.reply.error is not None and done.reply.error.code == "already-finished"
    rec2, _ = run(cfg, [SignalWorkflow(name="x")] * MAX_PENDING_SIGNALS)
    full = decide(rec2, SignalWorkflow(name="x"), T0)
    assert full.record is None and full.reply.error is not None
    assert full.reply.error.code == "too-many-signals"


def test_wait_with_a_timeout_fails_with_step_timeout() -> None:
    cfg = config([{"id": "w", "kind": "wait", "signal": "go", "timeout": 5}])
    _rec, eff = run(cfg, [])
    (timer,) = timers(eff, "timeout")
    rec, _ = run(cfg, [timer])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.step("w").error is not None
    assert rec.status.step("w").error.code == "step-timeout"


def test_child_workflow_starts_reports_back_and_is_stopped_with_its_parent() -> None:
    cfg = config([{"id": "kid", "kind": "workflow", "definition": "billing", "version": 2,
                   "input": {"n": "${input.n}"}}], input={"n": 4})
    rec, eff = run(cfg, [])
    (start,) = [e for e in eff if isinstance(e, StartChildEffect)]
    assert (start.definition, start.version, start.input) == ("billing", 2, {"n": 4})
    assert start.child_id == "w-kid-1" == rec.status.step("kid").child_id
    assert (start.parent.workflow_id, start.parent.step_id, start.parent.attempt) == (
        "w", "kid", 1)
    rec2, _ = run(cfg, [ok("kid", output={"paid": True})])
    assert rec2.status.state == WorkflowState.COMPLETED
    assert rec2.status.output == {"kid": {"paid": True}}
    rec3, eff3 = run(cfg, [StopWorkflow()])
    stops = [e for e in eff3 if isinstance(e, WorkflowCommandEffect)]
    assert [(s.workflow_id, s.command.kind) for s in stops] == [("w-kid-1", "stop")]
    assert rec3.status.state == WorkflowState.STOPPED


def test_a_child_reports_its_end_to_its_parent_step() -> None:
    cfg = config([{"id": "a", "task": "t"}],
                 parent={"workflow_id": "p", "step_id": "kid", "attempt": 2})
    _rec, eff = run(cfg, [ok("a", output=1)])
    (note,) = [e for e in eff if isinstance(e, NotifyParentEffect)]
    assert note.result.kind == "succeeded" and note.result.workflow_id == "p"
    assert (note.result.step_id, note.result.attempt) == ("kid", 2)
    _rec2, eff2 = run(cfg, [fail("a", retryable=False)])
    (note2,) = [e for e in eff2 if isinstance(e, NotifyParentEffect)]
    assert note2.result.kind == "failed"


# -- reliability -----------------------------------------------------------------------


def test_retry_jitter_is_bounded_and_deterministic() -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=10, backoff_coefficient=2,
                         max_interval=25, jitter=0.5)
    delays = [policy.delay_before(a, seed="w:a") for a in (2, 3, 4)]
    assert delays == [policy.delay_before(a, seed="w:a") for a in (2, 3, 4)]
    for d, full in zip(delays, [10, 20, 25], strict=True):
        assert full * 0.5 <= d <= full
    assert delays != [policy.delay_before(a, seed="w:b") for a in (2, 3, 4)]


def test_total_timeout_ends_a_retrying_step() -> None:
    cfg = config([{"id": "a", "task": "t", "total_timeout": 60,
                   "retry": {"max_attempts": 10, "initial_interval": 30}}])
    _rec, eff = run(cfg, [fail("a")])
    (total,) = timers(eff, "total-timeout")
    rec, _ = run(cfg, [fail("a"), total])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.step("a").error is not None
    assert rec.status.step("a").error.code == "step-total-timeout"


def test_heartbeat_timeout_fails_a_silent_attempt_and_spares_a_live_one() -> None:
    cfg = config([{"id": "a", "task": "t", "heartbeat_timeout": 10,
                   "retry": {"max_attempts": 2, "initial_interval": 0}}])
    _rec, eff = run(cfg, [])
    assert tasks(eff)[0].heartbeat_timeout == 10
    (hb,) = timers(eff, "heartbeat")
    beat = ResultInput(result=TaskProgress(workflow_id="w", step_id="a", attempt=1))
    # Started at t=1 and beat at t=2: the check at t=3 is early, so it is armed again.
    rec, eff2 = run(cfg, [beat, beat, hb])
    assert rec.status.step("a").state == StepState.RUNNING
    assert "step.progress" not in events(eff2)  # a bare heartbeat is no event
    again = timers(eff2, "heartbeat")[-1]
    assert again.due == T0 + timedelta(seconds=2 + 10)
    late = decide(rec, again, T0 + timedelta(seconds=30))
    assert late.record is not None
    assert late.record.status.step("a").attempts == 2  # presumed dead, retried
    assert late.record.status.step("a").error is not None
    assert late.record.status.step("a").error.code == "heartbeat-timeout"
    assert any(isinstance(e, CancelEffect) for e in late.effects)


def test_workflow_timeout_cancels_everything_and_fails() -> None:
    cfg = config([{"id": "a", "task": "t"}], timeout=30)
    _rec, eff = run(cfg, [])
    (t,) = timers(eff, "workflow-timeout")
    rec, eff2 = run(cfg, [t])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.error is not None and rec.status.error.code == "workflow-timeout"
    assert any(isinstance(e, CancelEffect) for e in eff2)


def test_continue_lets_independent_branches_finish() -> None:
    cfg = config([{"id": "a", "task": "t"}, {"id": "a2", "task": "t", "depends_on": ["a"]},
                  {"id": "b", "task": "t"}, {"id": "b2", "task": "t", "depends_on": ["b"]}],
                 on_failure="continue")
    rec, _ = run(cfg, [fail("a", retryable=False)])
    assert rec.status.state == WorkflowState.RUNNING
    assert states(rec)["a2"] == "cancelled"
    rec2, _ = run(cfg, [fail("a", retryable=False), ok("b"), ok("b2")])
    assert states(rec2) == {"a": "failed", "a2": "cancelled", "b": "succeeded",
                            "b2": "succeeded"}
    assert rec2.status.state == WorkflowState.FAILED
    assert rec2.status.error is not None and rec2.status.error.step == "a"


def test_saga_compensates_succeeded_steps_newest_first() -> None:
    cfg = config([
        {"id": "pay", "task": "t", "compensate": "refund"},
        {"id": "ship", "task": "t", "compensate": "unship", "depends_on": ["pay"]},
        {"id": "mail", "task": "t", "depends_on": ["ship"]},
        {"id": "refund", "task": "t", "input": {"payment": "${steps.pay.output}"}},
        {"id": "unship", "task": "t"},
    ])
    rec, _eff = run(cfg, [ok("pay", output="p1"), ok("ship"), fail("mail", retryable=False)])
    assert rec.status.state == WorkflowState.COMPENSATING
    assert rec.status.outcome == WorkflowState.FAILED
    rec2, eff2 = run(cfg, [ok("pay", output="p1"), ok("ship"), fail("mail", retryable=False),
                           ok("unship"), ok("refund")])
    assert [t.step_id for t in tasks(eff2)] == ["pay", "ship", "mail", "unship", "refund"]
    assert tasks(eff2)[-1].input == {"payment": "p1"}
    assert rec2.status.state == WorkflowState.FAILED
    evs = events(eff2)
    assert evs.index("workflow.compensating") < evs.index("workflow.failed")
    assert evs.count("workflow.failed") == 1
    # No failure: compensations are not needed and end skipped.
    rec3, eff3 = run(cfg, [ok("pay"), ok("ship"), ok("mail")])
    assert rec3.status.state == WorkflowState.COMPLETED
    assert states(rec3)["refund"] == "skipped" and "workflow.compensating" not in events(eff3)
    assert rec3.status.output == {"mail": None}


def test_stop_compensates_too_and_a_failed_compensation_does_not_stop_the_others() -> None:
    cfg = config([
        {"id": "a", "task": "t", "compensate": "undo_a"},
        {"id": "b", "task": "t", "compensate": "undo_b"},
        {"id": "c", "task": "t", "depends_on": ["a", "b"]},
        {"id": "undo_a", "task": "t"}, {"id": "undo_b", "task": "t"},
    ])
    rec, _ = run(cfg, [ok("a"), ok("b"), StopWorkflow(), fail("c", retryable=False),
                       fail("undo_b", retryable=False), ok("undo_a")])
    assert rec.status.state == WorkflowState.STOPPED
    assert states(rec)["undo_b"] == "failed" and states(rec)["undo_a"] == "succeeded"


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "field"), [
    ([{"id": "a", "task": "t", "when": "input.x >"}], "steps.0.when"),
    ([{"id": "a", "task": "t", "input": {"x": "${steps.b.output}"}}, {"id": "b", "task": "t"}],
     "steps.0.input"),
    ([{"id": "a", "task": "t", "when": "steps.b.output == 1"}, {"id": "b", "task": "t"}],
     "steps.0.when"),
    ([{"id": "a", "task": "t", "compensate": "ghost"}], "steps.0.compensate"),
    ([{"id": "a", "task": "t", "compensate": "u"}, {"id": "u", "task": "t", "depends_on": ["a"]}],
     "steps.1.depends_on"),
    ([{"id": "s", "kind": "switch", "value": "1", "cases": {"1": ["x"]}},
      {"id": "x", "task": "t"}], "steps.1.depends_on"),
    ([{"id": "n", "kind": "sleep"}], "duration"),
])
def test_definitions_are_checked_on_arrival_naming_the_field(steps: list[dict[str, Any]],
                                                            field: str) -> None:
    with pytest.raises((InvalidGraph, ExpressionError, ValueError)) as exc:
        config(steps)
    assert field in str(exc.value) or getattr(exc.value, "field", None) == field


# -- properties over every kind --------------------------------------------------------

_KINDS = ["task", "task", "transform", "sleep", "wait", "request", "switch", "map"]


@st.composite
def kind_dags(draw: st.DrawFn) -> WorkflowConfig:
    n = draw(st.integers(1, 7))
    steps: list[dict[str, Any]] = []
    comps: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        kind = draw(st.sampled_from(_KINDS))
        step: dict[str, Any] = {"id": f"s{i}", "depends_on": [f"s{d}" for d in deps],
                                "join": draw(st.sampled_from(["all", "any"])),
                                "retry": {"max_attempts": draw(st.integers(1, 2)),
                                          "initial_interval": draw(st.sampled_from([0, 1]))}}
        when = draw(st.sampled_from([None, None, "input.yes", "!input.yes"]))
        if when:
            step["when"] = when
        if kind == "task":
            step.update(task="t")
            if draw(st.booleans()):
                step["compensate"] = f"undo{i}"
                comps.append({"id": f"undo{i}", "task": "t"})
        elif kind == "transform":
            step.update(kind="transform", output={"i": i})
        elif kind == "sleep":
            step.update(kind="sleep", duration=draw(st.sampled_from([0, 5])))
        elif kind == "wait":
            step.update(kind="wait", signal=draw(st.sampled_from(["a", "b"])))
        elif kind == "request":
            step.update(kind="request", subject="svc.x")
        elif kind == "map":
            step.update(kind="map", items=draw(st.sampled_from(["[]", "[1, 2, 3]"])),
                        max_concurrency=2, step={"task": "t", "retry": step.pop("retry")})
        else:
            step.update(kind="switch", value="input.yes", cases={"true": []})
        steps.append(step)
    # A switch's branches: later steps that depend on it directly, split between cases.
    for s in steps:
        if s.get("kind") == "switch":
            kids = [t["id"] for t in steps if s["id"] in t["depends_on"]]
            s["cases"] = {"true": kids[::2]}
            s["default"] = kids[1::2]
    return config([*steps, *comps], input={"yes": draw(st.booleans())},
                  on_failure=draw(st.sampled_from(["fail-fast", "continue"])))


def _check_effects(rec: WorkflowRecord, effects: list[Any], seen_compensating: bool) -> None:
    for eff in effects:
        if not isinstance(eff, TaskEffect):
            continue
        step = rec.config.step(eff.task.step_id.split("[")[0])
        status = rec.status.step(step.id)
        assert status.state != StepState.SKIPPED
        deps = [rec.status.step(d).state for d in step.depends_on]
        if status.compensates:
            assert seen_compensating, "compensations only run after a failure or stop"
            target = rec.status.step(status.compensates)
            assert target.state == StepState.SUCCEEDED
        elif step.join == "all":
            assert all(d == StepState.SUCCEEDED for d in deps), "dependencies first"
        else:
            assert all(d in STEP_TERMINAL for d in deps) and (
                not deps or StepState.SUCCEEDED in deps)


class KindsMachine(RuleBasedStateMachine):
    """Random kinds, conditions, results, signals, timers, duplicates and stops."""

    @initialize(cfg=kind_dags())
    def create(self, cfg: WorkflowConfig) -> None:
        self.record: WorkflowRecord | None = None
        self.seqs: list[int] = []
        self.events: list[Event] = []
        self.terminal_events = 0
        self.compensating = False
        self.timers: list[TimerFired] = []
        self.delivered: list[Any] = []
        self.clock = 0
        self.apply(CreateWorkflow(config=cfg, fingerprint="f"))

    def apply(self, inp: Any) -> None:
        self.clock += 1
        self.take(inp, decide(self.record, inp, T0 + timedelta(seconds=self.clock)))

    def take(self, inp: Any, d: WorkflowDecision) -> None:
        """Check one input's decision on ``self.record`` and move on to it."""
        before = self.record
        if before is not None and before.status.state in WORKFLOW_TERMINAL:
            assert d.record is None, "a terminal workflow absorbs every input"
        if d.record is None:
            return
        for eff in d.effects:
            if isinstance(eff, EventEffect):
                self.seqs.append(eff.event.seq)
                self.events.append(eff.event)
                self.terminal_events += eff.event.type in EVENT_TERMINAL
                self.compensating |= eff.event.type == EventType.WORKFLOW_COMPENSATING
            elif isinstance(eff, TimerEffect):
                self.timers.append(eff.timer)
        _check_effects(d.record, d.effects, self.compensating)
        self.record = d.record
        self.delivered.append(inp)

    def active(self) -> list[tuple[str, int]]:
        assert self.record is not None
        return at_work(self.record)

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "retryable", "fatal"]))
    def result(self, data: st.DataObject, outcome: str) -> None:
        sid, attempt = data.draw(st.sampled_from(self.active()))
        self.apply(ok(sid, attempt, output={"v": 1}) if outcome == "ok"
                   else fail(sid, attempt, retryable=outcome == "retryable"))

    @rule()
    def join_maps(self) -> None:
        assert self.record is not None
        for s in self.record.status.steps:
            if s.map is not None and s.map.joining and s.state == StepState.RUNNING:
                self.apply(MapJoined(step_id=s.id, attempt=s.attempts, output=[1], size=3))
                return

    @rule(name=st.sampled_from(["a", "b"]))
    def signal(self, name: str) -> None:
        self.apply(SignalWorkflow(name=name, payload=name))

    @precondition(lambda self: bool(self.timers))
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        self.apply(data.draw(st.sampled_from(self.timers)))

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def duplicate_result(self, data: st.DataObject) -> None:
        results = [i for i in self.delivered if isinstance(i, ResultInput)]
        if results:
            before = self.record
            self.apply(data.draw(st.sampled_from(results)))
            assert self.record is before, "a duplicate result changes nothing"

    @rule()
    def stop(self) -> None:
        self.apply(StopWorkflow())

    @rule()
    def pause(self) -> None:
        self.apply(PauseWorkflow())

    @rule()
    def resume(self) -> None:
        self.apply(ResumeWorkflow())

    @invariant()
    def a_paused_workflow_starts_nothing(self) -> None:
        if self.record is not None and self.record.status.state == WorkflowState.PAUSED:
            d = decide(self.record, SignalWorkflow(name="a"), T0 + timedelta(days=1))
            assert d.record is None or not any(isinstance(e, TaskEffect) for e in d.effects)

    @invariant()
    def events_are_gap_free_with_one_terminal(self) -> None:
        assert self.seqs == list(range(1, len(self.seqs) + 1))
        assert self.terminal_events <= 1
        if self.record is not None:
            assert self.terminal_events == (self.record.status.state in WORKFLOW_TERMINAL)

    @invariant()
    def an_ended_history_keeps_the_promises(self) -> None:
        if self.record is not None and self.record.status.state in WORKFLOW_TERMINAL:
            status = self.record.status
            assert check_workflow(status.id, status, self.events, join_all=False) == []


TestKindsMachine = KindsMachine.TestCase
TestKindsMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


def at_work(record: WorkflowRecord) -> list[tuple[str, int]]:
    """(step id, attempt) of every attempt a worker holds, map items included."""
    out: list[tuple[str, int]] = []
    for s in record.status.steps:
        if s.map is not None and s.state == StepState.RUNNING:
            out += [(f"{s.id}[{i}]", a) for i, a in s.map.running.items()]
        elif s.state in STEP_IN_FLIGHT and s.map is None:
            out.append((s.id, s.attempts))
    return out


def drive_to_the_end(record: WorkflowRecord, outcomes: list[bool]) -> WorkflowRecord:
    """Answer whatever the workflow waits for until it ends (bounded)."""
    it = iter(outcomes)
    clock = 100
    for _ in range(1000):
        st_ = record.status
        if st_.state in WORKFLOW_TERMINAL:
            return record
        clock += 1
        now = T0 + timedelta(seconds=clock)
        inp: Any
        flights = at_work(record)
        waiting = [s for s in st_.steps if s.state == StepState.WAITING]
        retrying = [s for s in st_.steps if s.state == StepState.RETRYING]
        joining = [s for s in st_.steps if s.map is not None and s.map.joining
                   and s.state == StepState.RUNNING]
        item_retry = [(s, i, a) for s in st_.steps if s.map is not None
                      and s.state == StepState.RUNNING for i, a in s.map.retrying.items()]
        if flights:
            sid, att = flights[0]
            inp = ok(sid, att) if next(it, True) else fail(sid, att)
        elif joining:
            inp = MapJoined(step_id=joining[0].id, attempt=joining[0].attempts, output=[])
        elif item_retry:
            s, i, a = item_retry[0]
            inp = TimerFired(workflow_id="w", step_id=f"{s.id}[{i}]", attempt=a,
                             purpose="retry", due=now)
        elif waiting:
            s = waiting[0]
            cfg = record.config.step(s.id)
            inp = (SignalWorkflow(name=cfg.signal) if cfg.kind == "wait" else
                   TimerFired(workflow_id="w", step_id=s.id, attempt=s.attempts,
                              purpose="sleep", due=now))
        elif retrying:
            s = retrying[0]
            inp = TimerFired(workflow_id="w", step_id=s.id, attempt=s.attempts + 1,
                             purpose="retry", due=now)
        else:
            inp = TimerFired(workflow_id="w", purpose="stop-grace", due=now)
        d = decide(record, inp, now)
        if d.record is not None:
            _check_effects(d.record, d.effects, True)
            record = d.record
    raise AssertionError(f"no end after 1000 inputs: {record.status}")


@pytest.mark.parametrize("stop_first", [False, True])
@settings(max_examples=150, deadline=None)
@given(cfg=kind_dags(), outcomes=st.lists(st.booleans(), max_size=30))
def test_every_kind_of_run_reaches_exactly_one_terminal_state(
        stop_first: bool, cfg: WorkflowConfig, outcomes: list[bool]) -> None:
    record, _eff = run(cfg, [StopWorkflow()] if stop_first else [])
    record = drive_to_the_end(record, outcomes)
    assert record.status.state in WORKFLOW_TERMINAL
    assert all(s.state in STEP_TERMINAL for s in record.status.steps)
    # Skips follow the rules: a skipped step's condition was false, a dependency was
    # skipped (join all), every dependency was skipped (join any), or a switch passed it by.
    for s in record.status.steps:
        if s.state != StepState.SKIPPED or s.compensates:
            continue
        c = record.config.step(s.id)
        deps = [record.status.step(d).state for d in c.depends_on]
        switched = any(getattr(o, "kind", "") == "switch" and s.id in
                       [x for b in [*o.cases.values(), o.default] for x in b]
                       for o in record.config.steps)
        assert (c.when is not None or switched or StepState.SKIPPED in deps), s.id
    if record.status.state == WorkflowState.COMPLETED:
        assert not any(s.state == StepState.FAILED for s in record.status.steps
                       if not s.compensates)


# -- map -------------------------------------------------------------------------------


def item_ok(step: str, attempt: int = 1, output: Any = None) -> ResultInput:
    return ok(step, attempt, output)


def test_map_fans_out_with_bounded_concurrency_and_joins_in_order() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "input.xs", "max_concurrency": 2,
                   "step": {"task": "t", "input": {"v": "${item}", "i": "${index}"}}}],
                 input={"xs": ["a", "b", "c"]})
    rec, eff = run(cfg, [])
    assert [(t.step_id, t.input) for t in tasks(eff)] == [("m[0]", {"v": "a", "i": 0}),
                                                         ("m[1]", {"v": "b", "i": 1})]
    assert rec.status.step("m").map is not None and rec.status.step("m").map.total == 3
    rec2, eff2 = run(cfg, [ok("m[1]", output="B"), ok("m[1]", output="dup"),
                           ok("m[0]", output="A"), ok("m[2]", output="C")])
    puts = [e for e in eff2 if isinstance(e, PutOutputEffect)]
    assert [(p.key, p.output) for p in puts] == [("w.m.1.1", "B"), ("w.m.1.0", "A"),
                                                 ("w.m.1.2", "C")]
    assert [t.step_id for t in tasks(eff2)] == ["m[0]", "m[1]", "m[2]"]
    (join,) = [e for e in eff2 if isinstance(e, JoinMapEffect)]
    assert (join.step_id, join.attempt, join.total) == ("m", 1, 3)
    assert rec2.status.state == WorkflowState.RUNNING
    joined = MapJoined(step_id="m", attempt=1, output=["A", "B", "C"], size=13)
    rec3, _ = run(cfg, [ok("m[1]", output="B"), ok("m[0]", output="A"),
                        ok("m[2]", output="C"), joined, joined])
    assert rec3.status.state == WorkflowState.COMPLETED
    assert rec3.status.output == {"m": ["A", "B", "C"]}


def test_map_items_retry_and_a_final_failure_fails_fast() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2, 3]", "max_concurrency": 3,
                   "step": {"task": "t", "retry": {"max_attempts": 2, "initial_interval": 0}}}])
    rec, eff = run(cfg, [fail("m[1]"), fail("m[1]", attempt=2)])
    assert [(t.step_id, t.attempt) for t in tasks(eff)] == [
        ("m[0]", 1), ("m[1]", 1), ("m[2]", 1), ("m[1]", 2)]
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.step("m").error is not None
    assert "item 1 failed" in rec.status.step("m").error.message
    cancels = [e.notice.step_id for e in eff if isinstance(e, CancelEffect)]
    assert sorted(cancels) == ["m[0]", "m[2]"]


def test_map_under_continue_runs_every_item_then_fails_listing_them() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2, 3]",
                   "step": {"task": "t"}}], on_failure="continue")
    rec, eff = run(cfg, [fail("m[0]", retryable=False), ok("m[1]"), ok("m[2]")])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.step("m").error is not None
    assert rec.status.step("m").error.code == "items-failed"
    assert rec.status.step("m").map is not None and rec.status.step("m").map.failed == [0]
    assert not [e for e in eff if isinstance(e, JoinMapEffect)]


def test_map_of_transforms_needs_no_worker_and_an_empty_map_succeeds_at_once() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "input.xs",
                   "step": {"kind": "transform", "output": "${item * 2}"}}],
                 input={"xs": [1, 2]})
    rec, eff = run(cfg, [])
    assert not tasks(eff)
    assert [p.output for p in eff if isinstance(p, PutOutputEffect)] == [2, 4]
    assert rec.status.step("m").map is not None and rec.status.step("m").map.joining
    empty = config([{"id": "m", "kind": "map", "items": "[]", "step": {"task": "t"}}])
    rec2, _ = run(empty, [])
    assert rec2.status.state == WorkflowState.COMPLETED and rec2.status.output == {"m": []}
    bad = config([{"id": "m", "kind": "map", "items": "input", "step": {"task": "t"}}])
    rec3, _ = run(bad, [])
    assert rec3.status.state == WorkflowState.FAILED
    assert rec3.status.step("m").error is not None
    assert rec3.status.step("m").error.field == "items"


def test_stopping_a_map_cancels_its_running_items() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2]", "step": {"task": "t"}}])
    rec, eff = run(cfg, [StopWorkflow()])
    assert sorted(e.notice.step_id for e in eff if isinstance(e, CancelEffect)) == [
        "m[0]", "m[1]"]
    assert rec.status.state == WorkflowState.STOPPING
    rec2, _ = run(cfg, [StopWorkflow(), fail("m[0]", code="cancelled", retryable=False),
                        fail("m[1]", code="cancelled", retryable=False)])
    assert rec2.status.state == WorkflowState.STOPPED
    assert rec2.status.step("m").state == StepState.CANCELLED


def test_a_map_can_run_a_child_workflow_per_item() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "input.xs",
                   "step": {"kind": "workflow", "definition": "per-item",
                            "input": {"x": "${item}"}}}], input={"xs": [10, 20]})
    _rec, eff = run(cfg, [])
    starts = [e for e in eff if isinstance(e, StartChildEffect)]
    assert [(s.child_id, s.input, s.parent.step_id) for s in starts] == [
        ("w-m-0-1", {"x": 10}, "m[0]"), ("w-m-1-1", {"x": 20}, "m[1]")]
    rec2, eff2 = run(cfg, [ok("m[1]", output=2), StopWorkflow()])
    stops = [e.workflow_id for e in eff2 if isinstance(e, WorkflowCommandEffect)]
    assert stops == ["w-m-0-1"]
    assert rec2.status.state == WorkflowState.STOPPING


def test_an_expression_failing_at_run_time_fails_its_step_naming_expression_and_path() -> None:
    cfg = config([{"id": "a", "task": "t", "input": {"total": {"n": "${input.count + 1}"}},
                   "retry": {"max_attempts": 3}},
                  {"id": "b", "task": "t", "when": "input.flag"}], on_failure="continue",
                 input={"count": "three"})
    rec, eff = run(cfg, [])
    err = rec.status.step("a").error
    assert err is not None and err.code == "expression-error" and err.step == "a"
    assert err.field == "input.total.n" and "input.count + 1" in err.message
    assert err.details == {"expression": "input.count + 1"}
    assert rec.status.step("a").attempts == 1  # not retried: it would fail the same way
    assert rec.status.step("b").error is not None
    assert rec.status.step("b").error.field == "when"
    assert rec.status.state == WorkflowState.FAILED and not tasks(eff)
