"""The orchestrator's Prometheus metrics: every metric object lives here.

Each :class:`OrchestratorMetrics` has its own ``CollectorRegistry`` (never the global
one), so several orchestrators in one process keep apart. The engine stays pure: the
runtime derives workflow and step metrics from the events of a decision it has stored
and published (:meth:`OrchestratorMetrics.observe_published`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from contracts.models import EVENT_TERMINAL, EventType, WorkflowState

from .attempts import ended_attempts
from .records import Effect, EventEffect, WorkflowRecord

__all__ = ["STEP_DURATION_BUCKETS", "MetricsServer", "OrchestratorMetrics"]

#: Seconds; steps run from milliseconds (transforms) to hours (human approvals).
STEP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 300.0, 900.0, 3600.0, float("inf"))

_FINISHED_STATE = {
    EventType.WORKFLOW_COMPLETED: WorkflowState.COMPLETED,
    EventType.WORKFLOW_FAILED: WorkflowState.FAILED,
    EventType.WORKFLOW_STOPPED: WorkflowState.STOPPED,
}


def _labelled(children: dict[Any, Any], metric: Any, values: tuple[str, ...]) -> Any:
    """``metric.labels(*values)``, looked up once: labels() costs a lock each call."""
    child = children.get(values)
    if child is None:
        child = children[values] = metric.labels(*values)
    return child


class OrchestratorMetrics:
    """The metrics of one orchestrator replica, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.workflows_started = Counter(
            "natsflow_workflows_started", "Workflows started.", registry=r)
        self.workflows_finished = Counter(
            "natsflow_workflows_finished", "Workflows that reached a terminal state.",
            ["state"], registry=r)
        self.step_attempts = Counter(
            "natsflow_step_attempts_finished",
            "Step attempts that ended, by step kind, task type ('' if none) and outcome "
            "(succeeded, failed, retrying, cancelled).",
            ["kind", "task", "outcome"], registry=r)
        self.step_duration = Histogram(
            "natsflow_step_duration_seconds",
            "Seconds from an attempt's dispatch (or start) to its end.",
            ["kind", "task"], buckets=STEP_DURATION_BUCKETS, registry=r)
        self.processed = Counter(
            "natsflow_inbox_processed",
            "Inbox messages (commands, results, timers) applied to their record and "
            "settled.", registry=r)
        self.redeliveries = Counter(
            "natsflow_inbox_redeliveries", "Inbox messages delivered more than once.",
            registry=r)
        self.dead_letters = Counter(
            "natsflow_dead_letters", "Messages moved to the dead-letter stream, by reason.",
            ["reason"], registry=r)
        self.trigger_messages = Counter(
            "natsflow_trigger_messages", "Messages of each trigger, by outcome: received, "
            "matched, skipped (by `when`), started, duplicates, failed (mapping: "
            "dead-lettered).", ["namespace", "trigger", "outcome"], registry=r)
        self.early_results = Counter(
            "natsflow_early_results",
            "Task results handed back because they came before their dispatch was saved.",
            registry=r)
        self.forged_results = Counter(
            "natsflow_forged_results",
            "Task results and progress reports refused for not carrying their attempt's "
            "token (dead-lettered as forged-result).", registry=r)
        self.cas_retries = Counter(
            "natsflow_cas_retries",
            "Record writes that lost a compare-and-set and were decided again.", registry=r)
        self.stale_outboxes = Counter(
            "natsflow_stale_outboxes",
            "Records read from KV with an outbox this process did not see published, by "
            "outcome: settled (every input it names is acked: nothing sent) or "
            "republished.", ["outcome"], registry=r)
        self.loop_restarts = Counter(
            "natsflow_loop_restarts",
            "Consume loops that died of an unexpected error and were started again.",
            ["loop"], registry=r)
        self.cache_records = Gauge(
            "natsflow_record_cache_records", "Records held in this process's cache.",
            ["entity"], registry=r)
        self.webhook_deliveries = Counter(
            "natsflow_webhook_deliveries",
            "Webhook POSTs made, by outcome (delivered, retried, dead-lettered).",
            ["outcome"], registry=r)
        self.queue_pending = Gauge(
            "natsflow_queue_pending",
            "Messages not yet delivered to a consumer (num_pending), sampled periodically.",
            ["stream", "consumer"], registry=r)
        self.tasks_without_worker = Gauge(
            "natsflow_tasks_without_worker",
            "Tasks in the tasks stream that no consumer takes (no worker ever served their "
            "type), by task type, sampled periodically.", ["task"], registry=r)
        self.waiting_for_worker = Counter(
            "natsflow_steps_waiting_for_worker",
            "Attempts no worker started within the grace period (step.waiting_for_worker "
            "events), by task type and reason.", ["task", "reason"], registry=r)
        self.limit_in_use = Gauge(
            "natsflow_limit_in_use", "Permits held of a concurrency limit (all its keys), "
            "sampled periodically from the limits bucket.", ["limit"], registry=r)
        self.limit_waiting = Gauge(
            "natsflow_limit_waiting", "Runs and attempts waiting for a permit of a "
            "concurrency limit (all its keys), sampled periodically.", ["limit"], registry=r)
        # Labelled children by label values (see _labelled).
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    def names(self) -> list[str]:
        """Every metric's exposed name (``_total`` on counters; a histogram's base name)."""
        return sorted(m.name + ("_total" if m.type == "counter" else "")
                      for m in self.registry.collect())

    def track_cache(self, entity: str, size: Callable[[], int]) -> None:
        """Report ``size()`` as the cache size of ``entity`` at every scrape."""
        self.cache_records.labels(entity=entity).set_function(lambda: float(size()))

    def observe_published(self, before: WorkflowRecord | None, after: WorkflowRecord,
                          effects: Sequence[Effect]) -> None:
        """Count what the events of one published decision say happened.

        Args:
            before: The workflow record as it was before the decision (None if new);
                it says when an attempt that ends now was dispatched.
            after: The record the decision made: it says each step's kind and task.
            effects: The decision's effects; only status events are looked at.
        """
        for effect in effects:
            if not isinstance(effect, EventEffect):
                continue
            if effect.event.type == EventType.WORKFLOW_STARTED:
                self.workflows_started.inc()
            elif effect.event.type in EVENT_TERMINAL:
                self.workflows_finished.labels(
                    state=_FINISHED_STATE[effect.event.type].value).inc()
            elif effect.event.type == EventType.STEP_WAITING_FOR_WORKER:
                data = effect.event.data
                self.waiting_for_worker.labels(task=str(data.get("task") or ""),
                                               reason=str(data.get("reason") or "")).inc()
        for ended in ended_attempts(before, after, effects):
            kind = ended.kind.value
            _labelled(self._attempts, self.step_attempts,
                      (kind, ended.task, ended.outcome)).inc()
            if ended.begun is not None:
                seconds = (ended.ended - ended.begun).total_seconds()
                _labelled(self._durations, self.step_duration,
                          (kind, ended.task)).observe(max(seconds, 0.0))


class MetricsServer:
    """``/metrics`` of a registry over HTTP (prometheus_client's own server, a thread).

    Args:
        registry: What to expose.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: Interface to listen on.
    """

    def __init__(self, registry: CollectorRegistry, *, port: int, host: str = "127.0.0.1") -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen; :attr:`port` is then the bound port."""
        self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                       registry=self.registry)
        self.port = self._server.server_port

    async def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return

        def shut() -> None:
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(timeout=5.0)

        await asyncio.to_thread(shut)
