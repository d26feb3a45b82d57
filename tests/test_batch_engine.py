"""The batch engine, pure."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.messages import BatchConfig
from orchestrator.batch_engine import decide_batch
from orchestrator.records import (
    BatchRecord,
    CreateBatch,
    MemberFinished,
    StopBatch,
    WorkflowCommandEffect,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def batch(n: int, limit: int | None) -> BatchConfig:
    return BatchConfig.model_validate({
        "id": "b1", "max_concurrency": limit, "inputs": [{"i": i} for i in range(n)],
        "workflow": {"name": "w", "steps": [{"id": "a", "task": "t"}]}})


def created(n: int, limit: int | None) -> tuple[BatchRecord, list[str]]:
    d = decide_batch(None, CreateBatch(config=batch(n, limit), fingerprint="f"), NOW,
                     batch_id="b1")
    assert d.record is not None and d.reply.created
    started = [e.workflow_id for e in d.effects if isinstance(e, WorkflowCommandEffect)]
    return d.record, started


def test_starts_at_most_max_concurrency_and_refills() -> None:
    rec, started = created(5, 2)
    assert started == ["b1-0", "b1-1"]
    assert rec.status.counts == {"running": 2, "pending": 3}
    d = decide_batch(rec, MemberFinished(workflow_id="b1-0", state="completed"), NOW,
                     batch_id="b1")
    assert d.record is not None
    assert [e.workflow_id for e in d.effects if isinstance(e, WorkflowCommandEffect)] == ["b1-2"]
    # the same notice again changes nothing
    again = decide_batch(d.record, MemberFinished(workflow_id="b1-0", state="completed"), NOW,
                         batch_id="b1")
    assert again.record is None


def test_finishes_with_overall_state() -> None:
    rec, started = created(2, None)
    assert started == ["b1-0", "b1-1"]
    for wid, state in (("b1-0", "completed"), ("b1-1", "failed")):
        d = decide_batch(rec, MemberFinished(workflow_id=wid, state=state), NOW, batch_id="b1")
        assert d.record is not None
        rec = d.record
    assert rec.status.state == "failed" and rec.status.finished_at == NOW


def test_stop_stops_running_members_and_drops_pending_ones() -> None:
    rec, _ = created(4, 1)
    d = decide_batch(rec, StopBatch(), NOW, batch_id="b1")
    assert d.record is not None
    stops = [e for e in d.effects if isinstance(e, WorkflowCommandEffect)]
    assert [(e.workflow_id, e.command.kind) for e in stops] == [("b1-0", "stop")]
    assert d.record.status.state == "stopping"
    d2 = decide_batch(d.record, MemberFinished(workflow_id="b1-0", state="stopped"), NOW,
                      batch_id="b1")
    assert d2.record is not None and d2.record.status.state == "stopped"
    refused = decide_batch(d2.record, StopBatch(), NOW, batch_id="b1")
    assert refused.reply.error is not None and refused.reply.error.code == "already-finished"


def test_conflicting_recreate_and_unknown_batch() -> None:
    rec, _ = created(1, None)
    other = decide_batch(rec, CreateBatch(config=batch(2, None), fingerprint="g"), NOW,
                         batch_id="b1")
    assert other.reply.error is not None and other.reply.error.code == "id-conflict"
    missing = decide_batch(None, StopBatch(), NOW, batch_id="zz")
    assert missing.reply.error is not None and missing.reply.error.code == "batch-not-found"


def test_batch_records_round_trip_through_their_stored_form() -> None:
    rec, _ = created(3, None)  # max_concurrency None: dropped when stored, restored on load
    stored = rec.stored_form()
    assert BatchRecord.model_validate_json(stored) == rec
