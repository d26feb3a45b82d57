"""``decide_all`` (one transition for a run of inputs) is ``decide`` on each in turn.

The shell hands the engine every input of a fetched batch that is for one record at
once; a map's item results share one transition there. These properties hold the two
ways equal over the random workflows, results, timers, joins and commands of
``test_engine_kinds.KindsMachine``: the inputs are gathered into groups, each made
against the record as it stood before the group (as a fetched batch's are), and every
group is decided both ways.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule
from test_engine import T0, config, fail, ok
from test_engine_kinds import KindsMachine, kind_dags

from contracts.models import StepState, WorkflowConfig
from orchestrator.engine import decide, decide_all
from orchestrator.permits import PermitInput
from orchestrator.records import (
    CreateWorkflow,
    Decisions,
    Reply,
    ResultInput,
    SummaryEffect,
    TaskEffect,
    WorkflowDecision,
    WorkflowRecord,
)


def one_by_one(record: WorkflowRecord | None, inputs: list[Any], now: Any
               ) -> tuple[WorkflowRecord | None, list[WorkflowDecision]]:
    decisions = []
    for inp in inputs:
        d = decide(record, inp, now)
        decisions.append(d)
        if d.record is not None:
            record = d.record
    return record, decisions


def assert_same(start: WorkflowRecord | None, inputs: list[Any], now: Any) -> Decisions[Any]:
    """Decide ``inputs`` both ways and hold the answers equal; the grouped answer."""
    grouped = decide_all(start, inputs, now)
    record, decisions = one_by_one(start, inputs, now)
    assert grouped.replies == [d.reply for d in decisions]
    assert grouped.effects == [e for d in decisions if d.record is not None
                               for e in d.effects]
    if record is start:
        assert grouped.record is start, "nothing changed, so the very record is kept"
    else:
        assert grouped.record is not None and record is not None
        # The outbox is the shell's to fill (with every decision's effects); the rest
        # of the record is the same.
        assert (grouped.record.model_dump(exclude={"outbox"})
                == record.model_dump(exclude={"outbox"}))
    return grouped


class GroupedMachine(KindsMachine):
    """KindsMachine whose inputs come in groups, each decided both ways."""

    @initialize(cfg=kind_dags(), size=st.integers(2, 8))
    def create(self, cfg: WorkflowConfig, size: int = 1) -> None:  # type: ignore[override]
        self.size = size
        self.pending: list[Any] = []
        super().create(cfg)

    def apply(self, inp: Any) -> None:
        if self.record is None:
            super().apply(inp)  # the create: nothing to group it with
            return
        self.pending.append(inp)
        if len(self.pending) >= self.size:
            self.flush()

    @rule()
    def flush(self) -> None:
        inputs, self.pending = self.pending, []
        if not inputs:
            return
        self.clock += 1
        now = T0 + timedelta(seconds=self.clock)
        assert_same(self.record, inputs, now)
        for inp in inputs:  # the machine's own checks, on the decisions one by one
            self.take(inp, decide(self.record, inp, now))

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data())
    def burst(self, data: st.DataObject) -> None:
        """A report for every attempt at work, as a map's items send them."""
        for sid, attempt in self.active():
            outcome = data.draw(st.sampled_from(["ok", "ok", "retryable", "fatal"]))
            self.apply(ok(sid, attempt, output={"v": 1}) if outcome == "ok"
                       else fail(sid, attempt, retryable=outcome == "retryable"))

    @precondition(lambda self: bool(self.timers))
    @rule(data=st.data())
    def timers_due(self, data: st.DataObject) -> None:
        for timer in data.draw(st.lists(st.sampled_from(self.timers), max_size=4)):
            self.apply(timer)

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def duplicate_result(self, data: st.DataObject) -> None:
        # Gathered, a duplicate may share a group with inputs that change the record.
        results = [i for i in self.delivered if isinstance(i, ResultInput)]
        if results:
            self.apply(data.draw(st.sampled_from(results)))

    def teardown(self) -> None:
        if getattr(self, "pending", None):
            self.flush()


TestGroupedMachine = GroupedMachine.TestCase
TestGroupedMachine.settings = settings(max_examples=300, stateful_step_count=50,
                                       deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


def test_a_map_batch_of_item_results_is_one_decision_with_every_effect() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2, 3, 4, 5]",
                   "max_concurrency": 2, "step": {"task": "t"}}])
    start = decide(None, CreateWorkflow(config=cfg, fingerprint="f"), T0).record
    assert start is not None
    grouped = assert_same(start, [ok("m[0]", output=0), ok("m[1]", output=1)],
                          T0 + timedelta(seconds=1))
    assert grouped.record is not None
    progress = grouped.record.status.step("m").map
    assert progress is not None and progress.succeeded == 2
    # Both freed places were filled: items 2 and 3 are dispatched.
    assert sorted(e.task.step_id for e in grouped.effects if isinstance(e, TaskEffect)) \
        == ["m[2]", "m[3]"]
    assert grouped.replies == [Reply(), Reply()]


def test_a_group_that_ends_the_workflow_writes_the_list_once_per_change() -> None:
    cfg = config([{"id": "m", "kind": "map", "items": "[1, 2]", "max_concurrency": 2,
                   "step": {"task": "t"}}])
    start = decide(None, CreateWorkflow(config=cfg, fingerprint="f"), T0).record
    assert start is not None
    grouped = assert_same(start, [ok("m[0]"), ok("m[1]"), ok("m[1]")],
                          T0 + timedelta(seconds=1))
    assert grouped.record is not None
    assert grouped.record.status.step("m").state == StepState.RUNNING  # joining
    assert not [e for e in grouped.effects if isinstance(e, SummaryEffect)]


def test_a_report_ahead_of_its_dispatch_is_early_and_the_next_one_is_not() -> None:
    cfg = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t"}])
    start = decide(None, CreateWorkflow(config=cfg, fingerprint="f"), T0).record
    grouped = assert_same(start, [ok("a", attempt=2), ok("b")], T0 + timedelta(seconds=1))
    assert grouped.replies == [Reply(early=True), Reply()]


def test_each_report_gives_its_permits_back_where_its_own_decision_would() -> None:
    limited = {"task": "t", "concurrency": {"limit": 5}}
    cfg = config([{"id": "a", **limited}, {"id": "b", **limited}])
    record = decide(None, CreateWorkflow(config=cfg, fingerprint="f"), T0).record
    for sid in ("a", "b"):
        record = decide(record, PermitInput(outcome="granted", step_id=sid, attempt=1,
                                            index=0), T0).record
    assert record is not None
    assert {s.state for s in record.status.steps} == {StepState.DISPATCHED}
    grouped = assert_same(record, [ok("a"), ok("b")], T0 + timedelta(seconds=1))
    kinds = [type(e).__name__ for e in grouped.effects]
    # a's release follows a's events, before b's: as two decisions would have it.
    assert kinds.index("LimitEffect") < kinds.index("EventEffect", kinds.index("LimitEffect"))
