"""The orchestrator process: declarations, the API, and the consume loops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from contracts.egress import EgressPolicy
from contracts.errors import ConfigMismatch
from contracts.subjects import PARTITIONS
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect
from transport.consume import ConsumerStalled, PullConsumer, PullGroup
from transport.publish import AsyncPublisher
from transport.streams import (
    ENGINE_ACK_WAIT,
    Topology,
    declare_bucket,
    declare_stream,
    ensure_consumer,
    patiently,
)

from .api import Api
from .builtins import BuiltinSteps
from .definitions import DefinitionStore
from .engine import EngineSettings
from .faults import NO_CRASHES, CrashPoints
from .limiter import Limiter
from .members import MEMBER_TTL, Members, new_member_id
from .metrics import MetricsServer, OrchestratorMetrics
from .outputs import OutputStore
from .records import TimerFired
from .runtime import Item, Malformed, Processor, Verdict
from .schedule_runner import ScheduleRunner, ScheduleStore
from .schedules_api import ScheduleApi
from .store import KvRecordStore
from .timers import JetStreamParking, TimerParking
from .tokens import KEY_BYTES, RESULT_KEY, new_key
from .triggers import TriggerApi, TriggerRunner, TriggerStore
from .webhooks import WebhookDeliverer, WebhookSettings
from .workers import ConsumerView, tasks_without_worker

__all__ = ["WORKER_GRACE", "Orchestrator"]

log = logging.getLogger("natsflow.orchestrator")

#: Seconds before a consume loop that died of an error is started again.
_WATCHDOG_PAUSE = 0.5
#: Default seconds an attempt may wait for a worker before its step says so.
WORKER_GRACE = 30.0
#: Seconds a fetch waits for messages before its loop looks around (a stop halts it).
FETCH_WAIT = 1.0
#: Seconds a look at the tasks stream's consumers is reused (grace timers come in bursts).
_CONSUMERS_FRESH = 1.0


@dataclasses.dataclass(slots=True)
class _Lane:
    """The engine and timer consumers of one partition (or the shared pair), pulled here
    (taken from by the one engine loop and the one timer loop, through their groups)."""

    partition: int | None  # None: the shared consumers
    engine: PullConsumer
    timer: PullConsumer

    @property
    def subs(self) -> list[PullConsumer]:
        return [self.engine, self.timer]


async def _finish(tasks: list[asyncio.Task[None]], *, within: float) -> None:
    """Wait up to ``within`` seconds for ``tasks``, then cancel the rest and wait for them."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=within)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def result_key(js: JetStreamContext, config: KeyValueConfig, *,
                     declare: Callable[[KeyValueConfig], Awaitable[KeyValue]]) -> bytes:
    """The deployment's result key: made by the first orchestrator, read by the others.

    Kept in a bucket only orchestrators may read (docs/security.md); ``create`` is a
    compare-and-set, so replicas starting together agree on one key.
    """
    kv = await declare(config)
    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
        await kv.create(RESULT_KEY, new_key())  # unless another orchestrator did first
    entry = await kv.get(RESULT_KEY)
    if entry.value is None or len(entry.value) != KEY_BYTES:
        raise ConfigMismatch(f"the result key in bucket {config.bucket} is not "
                             f"{KEY_BYTES} bytes: delete it to have a new one made",
                             field="result_key", details={"bucket": config.bucket})
    return entry.value


async def cluster_of(js: JetStreamContext, stream: str) -> str | None:
    """The name of the NATS cluster that holds ``stream``; None on a single server.

    Read from the stream's info (nats-py keeps the server's INFO private).
    """
    info = await js.stream_info(stream)
    return info.cluster.name if info.cluster is not None else None


class Orchestrator:
    """One orchestrator replica. Run as many as you like against one NATS.

    Args:
        settings: How to reach NATS, and the deployment prefix.
        replicas: JetStream replicas for streams and buckets it declares.
        nc: An already connected client to use (not closed on stop).
        fetch_batch: Most messages taken per fetch.
        stop_grace: Seconds a stopping workflow waits for its running steps.
        builtins: Also serve the built-in steps (``natsflow.request``, ``natsflow.http``,
            ``natsflow.publish``) in this process.
        metrics_port: Serve ``/metrics`` (Prometheus) on this port; 0 picks a free one
            (see :attr:`metrics_server`), None serves none. Metrics are counted either way.
        metrics_host: Interface the metrics server listens on.
        queue_sample_interval: Seconds between samples of the queues' depths.
        webhooks: Also deliver webhooks in this process (the queue is shared by every
            orchestrator that does).
        webhook_settings: Secret, retries and timeouts of webhook deliveries.
        egress: What ``http``/``request``/``publish`` steps and webhooks may reach beyond
            the defaults (public http/https hosts, subjects neither the server's nor
            natsflow's); None opens nothing (see :mod:`contracts.egress`).
        clock: Source of ``now`` (UTC) for decisions and for deciding a timer is due.
        timers: How a timer that is not yet due waits (default: JetStream keeps it as a
            delayed nak); a test environment's clock parks them in hand to skip time.
        ack_wait: Seconds a message this replica took may stay unacked before JetStream
            hands it to a replica again: after a crash, how long its work in hand waits.
            Every replica should use the same value (each start declares it).
        worker_grace: Seconds a dispatched attempt may wait for a worker before its step
            is marked ``waiting_for_worker`` (None: never); each dispatch arms a timer.
        crash_points: Called at each named point of a transition; fault-injection tests
            arm a :class:`~orchestrator.faults.CrashPlan` here (default: none).
        member: This orchestrator's id among the deployment's (default: host, pid and a
            random part); the live ones share the partitions (:mod:`orchestrator.members`).
    """

    def __init__(self, settings: NatsSettings, *, replicas: int = 1, nc: Client | None = None,
                 fetch_batch: int = 256, stop_grace: float = 10.0,
                 builtins: bool = True, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", queue_sample_interval: float = 5.0,
                 webhooks: bool = True, webhook_settings: WebhookSettings | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 ack_wait: float = ENGINE_ACK_WAIT,
                 egress: EgressPolicy | None = None,
                 worker_grace: float | None = WORKER_GRACE,
                 timers: TimerParking | None = None,
                 crash_points: CrashPoints = NO_CRASHES,
                 member: str | None = None) -> None:
        self.settings = settings
        self.crash_points = crash_points
        self.egress = egress or EgressPolicy()
        self.subjects = settings.subjects
        self.topology = Topology(self.subjects, replicas=replicas, engine_ack_wait=ack_wait)
        self.nc = nc
        self._owns_nc = nc is None
        self.fetch_batch = fetch_batch
        self.engine_settings = EngineSettings(subjects=self.subjects, stop_grace=stop_grace,
                                              worker_grace=worker_grace or None)
        self.processor: Processor | None = None
        self.publisher: AsyncPublisher | None = None
        self.api: Api | None = None
        self.schedules: ScheduleRunner | None = None
        self.triggers: TriggerRunner | None = None
        self._loops: list[asyncio.Task[None]] = []
        #: The consumers pulled here: the shared pair (key None) and each owned partition's.
        self._lanes: dict[int | None, _Lane] = {}
        self._closing: set[asyncio.Task[None]] = set()  # lanes of partitions given up
        # Every lane's engine consumer, and every lane's timer consumer, each taken from
        # by one loop: one process's batches are as large as with one consumer.
        self._engine_group = PullGroup()
        self._timer_group = PullGroup()
        self.member = member or new_member_id()
        self.members: Members | None = None
        self._redeclaring: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.builtins = builtins
        self._builtins = contextlib.AsyncExitStack()
        self.metrics = OrchestratorMetrics()
        self.metrics_server = (MetricsServer(self.metrics.registry, port=metrics_port,
                                             host=metrics_host)
                               if metrics_port is not None else None)
        self.queue_sample_interval = queue_sample_interval
        self.clock = clock
        self.timers: TimerParking = timers or JetStreamParking()
        self.webhooks = webhooks
        self.webhook_settings = webhook_settings or WebhookSettings()
        self.deliverer: WebhookDeliverer | None = None
        self.limiter: Limiter | None = None
        self._task_consumers: tuple[float, list[ConsumerView] | None] = (float("-inf"), None)

    async def start(self) -> None:
        """Connect, declare streams/consumers/buckets, serve the API, start consuming."""
        if self.metrics_server is not None:
            self.metrics_server.start()  # first: a port in use fails the start at once
            log.info("metrics on http://%s:%d/metrics", self.metrics_server.host,
                     self.metrics_server.port)
        if self.nc is None:
            self.nc = await connect(self.settings, name="natsflow-orchestrator", timeout=None)
        js = self.nc.jetstream()
        # Started beside other services on a cluster, a declaration may meet a stream
        # being scaled or a leader being elected: wait that out, never exit on it.
        await patiently("the streams and consumers", self._declare)
        t = self.topology  # _declare may have adopted the deployment's replicas

        async def bucket(config: KeyValueConfig) -> KeyValue:
            return await patiently(f"the {config.bucket} bucket",
                                   lambda: declare_bucket(js, config))

        self.publisher = await AsyncPublisher(self.nc).start()
        workflows = KvRecordStore(await bucket(t.workflows_kv()), self.publisher)
        batches = KvRecordStore(await bucket(t.batches_kv()), self.publisher)
        idempotency = await bucket(t.idempotency_kv())
        blobs = await patiently("the blobs object store", lambda: js.create_object_store(
            # nats-py overwrites config.bucket with this argument
            self.subjects.blobs_bucket, config=t.blobs_store()))
        outputs = OutputStore(js, self.subjects, await bucket(t.outputs_kv()), blobs)
        definitions = DefinitionStore(await bucket(t.definitions_kv()))
        await bucket(t.summaries_kv())  # written by the outbox
        await bucket(t.keys_kv())  # the gateways' API keys: there before any gateway starts
        limits = await bucket(t.limits_kv())
        key = await patiently("the result key", lambda: result_key(
            js, t.secrets_kv(), declare=bucket))
        self.engine_settings = dataclasses.replace(self.engine_settings, result_key=key)
        self.processor = Processor(self.nc, self.subjects, workflows=workflows,
                                   batches=batches, settings=self.engine_settings,
                                   definitions=definitions, outputs=outputs,
                                   metrics=self.metrics, clock=self.clock,
                                   publisher=self.publisher, egress=self.egress,
                                   crash_points=self.crash_points)
        schedules = ScheduleStore(await bucket(t.schedules_kv()))
        runs = NatsflowClient(self.nc, self.subjects)
        schedule_api = ScheduleApi(self.subjects, store=schedules, publisher=self.publisher,
                                   client=runs, definitions=definitions, clock=self.clock)
        triggers = TriggerStore(await bucket(t.triggers_kv()),
                                await bucket(t.trigger_stats_kv()))
        trigger_api = TriggerApi(self.nc, t, triggers, definitions)
        self.api = Api(self.nc, self.subjects, workflows=workflows, batches=batches,
                       idempotency=idempotency, definitions=definitions,
                       publisher=self.publisher, egress=self.egress, limits=limits,
                       more={**schedule_api.handlers(), **trigger_api.handlers()})
        self.schedules = ScheduleRunner(self.nc, self.subjects, store=schedules,
                                        publisher=self.publisher, client=runs,
                                        clock=self.clock)
        self.triggers = TriggerRunner(self.nc, t, triggers, create=self.api.create,
                                      settle=self.processor.settle,
                                      dead_letter=self.processor.dead_letter,
                                      messages=self.metrics.trigger_messages)
        self._lanes[None] = await self._open_lane(None)
        self._loops = [
            asyncio.create_task(self._watchdog(
                "engine", lambda: self._consume(self._engine_group, self._engine_batch))),
            asyncio.create_task(self._watchdog(
                "timer", lambda: self._consume(self._timer_group, self._timer_batch)))]
        self.members = Members(await bucket(t.members_kv(MEMBER_TTL)), self.member,
                               on_change=self._own,
                               declare=lambda: bucket(t.members_kv(MEMBER_TTL)),
                               nc=self.nc, ping_subject=self.subjects.member_ping)
        await patiently("the membership", self.members.join)
        members = self.members
        self._loops += [
            asyncio.create_task(self._watchdog("queue sampling", self._sample_queues)),
            asyncio.create_task(self._watchdog("membership",
                                               lambda: members.run(self._stopping)))]
        self.limiter = Limiter(self.nc, self.subjects, limits, publisher=self.publisher,
                               clock=self.clock, metrics=self.metrics,
                               sample_interval=self.queue_sample_interval)
        await self.limiter.start()
        await self.api.start()
        await self.schedules.start()
        await self.triggers.start()
        if self.webhooks:
            self.deliverer = WebhookDeliverer(self.nc, self.subjects,
                                              dead_letter=self.processor.dead_letter,
                                              settings=self.webhook_settings,
                                              metrics=self.metrics, egress=self.egress)
            await self.deliverer.start()
        if self.builtins:
            steps = BuiltinSteps(self.nc, self.subjects, egress=self.egress)
            await self._builtins.enter_async_context(
                steps.running(self.settings, replicas=self.topology.replicas))
        log.info("orchestrator ready (prefix %s; egress allowed beyond the defaults: %s)",
                 self.subjects.prefix, self.egress.as_dict())

    async def _declare(self) -> None:
        """Declare the streams and consumers (idempotent)."""
        assert self.nc is not None
        js = self.nc.jetstream()
        await self._adopt_replicas()
        t = self.topology
        for stream in (t.inbox(), t.tasks(), t.events(), t.dlq(), t.webhooks(), t.limits()):
            await declare_stream(js, stream)
        await ensure_consumer(js, self.subjects.inbox_stream, t.engine_consumer())
        await ensure_consumer(js, self.subjects.inbox_stream, t.timer_consumer())
        for partition in range(PARTITIONS):
            await ensure_consumer(js, self.subjects.inbox_stream,
                                  t.engine_partition_consumer(partition))
            await ensure_consumer(js, self.subjects.inbox_stream,
                                  t.timer_partition_consumer(partition))
        await ensure_consumer(js, self.subjects.inbox_stream, t.schedule_consumer())
        await ensure_consumer(js, self.subjects.webhooks_stream, t.webhook_consumer())
        await ensure_consumer(js, self.subjects.limits_stream, t.limiter_consumer())
        if t.replicas == 1:
            cluster = await cluster_of(js, self.subjects.inbox_stream)
            if cluster:
                log.warning("NATS is a cluster (%s) but streams have 1 replica: losing one "
                            "server loses data; start with --replicas 3", cluster)

    async def _adopt_replicas(self) -> None:
        """Run with the deployment's replicas when it has more than asked for.

        Someone made this deployment with ``--replicas 3``; a replica started without it
        must not create its buckets at R1 beside R3 streams (nor scale streams down).
        """
        assert self.nc is not None
        try:
            have = (await self.nc.jetstream().stream_info(self.subjects.inbox_stream)
                    ).config.num_replicas or 1
        except nats.js.errors.NotFoundError:
            have = 0
        if have > self.topology.replicas:
            log.warning("the deployment's streams have %d replicas; running with %d, not %d",
                        have, have, self.topology.replicas)
            self.topology = dataclasses.replace(self.topology, replicas=have)

    async def stop(self) -> None:
        """Stop fetching, let in-flight groups finish, deregister, disconnect."""
        self._stopping.set()
        self._engine_group.halt()  # the loops' waiting fetches return now, not after
        self._timer_group.halt()   # their timeout
        if self.members is not None:
            await self.members.leave()  # the others take the partitions at once
        if self.api is not None:
            await self.api.close()
        if self.schedules is not None:
            await self.schedules.stop()
        if self.triggers is not None:
            await self.triggers.stop()
        # Built-in steps and the engine wind down side by side: each waits for a fetch.
        await asyncio.gather(self._builtins.aclose(), self._stop_loops(),
                             self._stop_deliverer())
        if self._redeclaring is not None:
            self._redeclaring.cancel()
            await asyncio.gather(self._redeclaring, return_exceptions=True)
        for lane in self._lanes.values():
            for sub in lane.subs:
                await sub.stop()
        if self.publisher is not None:
            await self.publisher.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self._owns_nc and self.nc is not None:
            await self.nc.close()

    async def _stop_deliverer(self) -> None:
        if self.limiter is not None:
            await self.limiter.stop()
        if self.deliverer is not None:
            await self.deliverer.stop()

    async def _stop_loops(self) -> None:
        # Loops finish the batch in hand and exit at their next fetch; what is still
        # unfinished after the bound is redelivered to another replica later.
        await _finish(self._loops, within=5.0)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _own(self, partitions: frozenset[int]) -> None:
        """Pull exactly the shared consumers and those of ``partitions``.

        A partition given up is taken from no more: the batches in hand that hold its
        messages finish as any others, and what it received and had not taken goes back
        at once (the new owner gets it); a partition taken is taken from now.
        """
        if self._stopping.is_set():
            return
        for partition in sorted(partitions - self._lanes.keys()):
            assert partition is not None
            self._lanes[partition] = await self._open_lane(partition)
        for partition in [k for k in self._lanes if k is not None and k not in partitions]:
            lane = self._lanes.pop(partition)
            self._engine_group.remove(lane.engine)  # asked for nothing more from here on
            self._timer_group.remove(lane.timer)
            closing = asyncio.create_task(self._close_lane(lane))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close_lane(self, lane: _Lane) -> None:
        for sub in lane.subs:
            await sub.stop()

    async def _open_lane(self, partition: int | None) -> _Lane:
        """Start pulling the engine and timer consumers of ``partition`` (None: shared)."""
        assert self.nc is not None
        s = self.subjects
        if partition is None:
            names = (s.engine_consumer, s.timer_consumer)
        else:
            names = (s.engine_partition_consumer(partition),
                     s.timer_partition_consumer(partition))
        engine_sub, timer_sub = [await PullConsumer(self.nc, s.inbox_stream, name,
                                                    batch=self.fetch_batch).start()
                                 for name in names]
        self._engine_group.add(engine_sub)
        self._timer_group.add(timer_sub)
        return _Lane(partition, engine_sub, timer_sub)

    async def run(self) -> None:
        """Start, then serve until cancelled (also while starting: stop() still runs)."""
        try:
            await self.start()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled while starting, and the cancel was swallowed on the way (on
                # Python 3.11 asyncio.wait_for loses one that races its inner future).
                raise asyncio.CancelledError
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- loops ----------------------------------------------------------------------
    async def _watchdog(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until stopping; if it dies of an error, log it and run it again.

        The loops catch what they expect; this is for what they do not, so that a
        process that looks alive never quietly stops consuming.
        """
        while not self._stopping.is_set():
            try:
                await loop()
            except Exception:
                log.exception("the %s loop died; starting it again", name)
                self.metrics.loop_restarts.labels(loop=name).inc()
                await asyncio.sleep(_WATCHDOG_PAUSE)

    async def _fetch(self, sub: PullGroup, most: int | None = None) -> list[Msg]:
        try:
            return await sub.next_batch(most or self.fetch_batch, timeout=FETCH_WAIT)
        except ConsumerStalled:
            # e.g. a server restarted without its data: declare everything again, beside
            # the fetching, which goes on (between leaders a declaration would wait out
            # timeouts, and the election ends by itself sooner).
            if self._redeclaring is None or self._redeclaring.done():
                log.warning("the server stopped answering pull requests; re-declaring")
                self._redeclaring = asyncio.create_task(self._redeclare())
            return []
        except Exception:
            log.exception("taking messages failed; retrying")
            await asyncio.sleep(0.5)
            return []

    async def _redeclare(self) -> None:
        try:
            await self._declare()
        except Exception as exc:
            log.warning("re-declaring the streams and consumers failed: %s", exc)

    async def _consume(self, sub: PullGroup,
                       handle: Callable[[list[Msg]], Coroutine[Any, Any, None]]) -> None:
        """Take messages while earlier batches are still in hand (up to ``fetch_batch``
        at once) and ``handle`` each batch: a batch waiting for its acks holds up only
        its own records, whose order the processor's per-record locks keep."""
        assert self.processor is not None
        batches: set[asyncio.Task[None]] = set()
        in_hand = 0
        room = asyncio.Event()

        def done(task: asyncio.Task[None], n: int) -> None:
            nonlocal in_hand
            batches.discard(task)
            in_hand -= n
            room.set()

        try:
            while not self._stopping.is_set():
                if in_hand >= self.fetch_batch:
                    room.clear()
                    await room.wait()
                    continue
                msgs = await self._fetch(sub, self.fetch_batch - in_hand)
                if msgs and self._stopping.is_set():
                    await self._hand_back(msgs)  # fetched as the stop came: another's
                elif msgs:
                    task = asyncio.create_task(handle(msgs))
                    batches.add(task)
                    in_hand += len(msgs)
                    task.add_done_callback(functools.partial(done, n=len(msgs)))
        except asyncio.CancelledError:
            for task in list(batches):
                task.cancel()  # each hands its messages back
            await asyncio.gather(*batches, return_exceptions=True)
            raise
        # Stopping: the batches in hand finish first.
        await asyncio.gather(*batches, return_exceptions=True)

    async def _engine_batch(self, msgs: list[Msg]) -> None:
        assert self.processor is not None
        try:
            await self.processor.handle(msgs)
        except asyncio.CancelledError:
            await self._hand_back(msgs)
            raise
        except Exception:
            log.exception("engine batch failed; messages will be redelivered")

    async def _hand_back(self, msgs: list[Msg]) -> None:
        """Cut short by a stop: give the batch back now, not after the ack wait.

        Messages already acked are unaffected (a nak after an ack is ignored); a
        transition saved but not published is finished by whoever takes its message
        next, from the record's outbox.
        """
        assert self.processor is not None
        await asyncio.shield(asyncio.gather(
            *(self.processor.settle(m, Verdict.RETRY) for m in msgs)))
        log.info("stopping: handed %d unfinished messages back", len(msgs))

    async def _sample_queues(self) -> None:
        """Every ``queue_sample_interval`` s: num_pending of the inbox, task and webhook
        consumers."""
        assert self.nc is not None
        js = self.nc.jetstream()
        s = self.subjects
        while not self._stopping.is_set():
            try:
                # One listing for the inbox's 18 consumers, not a request each.
                sampled = {*s.engine_consumers, *s.timer_consumers}
                samples = [(s.inbox_stream, info.name, info.num_pending)
                           for info in await js.consumers_info(s.inbox_stream)
                           if info.name in sampled]
                workers = await js.consumers_info(s.tasks_stream)
                samples += [(s.tasks_stream, info.name, info.num_pending) for info in workers]
                hooks = await js.consumer_info(s.webhooks_stream, s.webhook_consumer)
                samples.append((s.webhooks_stream, hooks.name, hooks.num_pending))
                stored = (await js.stream_info(s.tasks_stream, subjects_filter=s.all_tasks)
                          ).state.subjects or {}
            except Exception as exc:  # NATS away: keep the last samples
                log.debug("sampling the queues failed: %s", exc)
            else:
                gauge = self.metrics.queue_pending
                gauge.clear()  # consumers that are gone are gone from the metric too
                for stream, consumer, pending in samples:
                    gauge.labels(stream=stream, consumer=consumer).set(pending or 0)
                views = [ConsumerView.of(info) for info in workers]
                self._task_consumers = (asyncio.get_running_loop().time(), views)
                orphans = self.metrics.tasks_without_worker
                orphans.clear()
                for task, n in tasks_without_worker(stored, views,
                                                    head=s.task("")).items():
                    orphans.labels(task=task).set(n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.queue_sample_interval)

    async def _with_workers_seen(self, due: list[Item]) -> list[Item]:
        """Worker-grace timers, given the tasks stream's consumers to judge queued tasks by."""
        if not any(i.input.purpose == "worker-grace" for i in due):
            return due
        consumers = await self._consumers_of_tasks()
        if consumers is None:
            return due  # the engine says "unknown"
        return [dataclasses.replace(i, input=i.input.model_copy(update={"consumers": consumers}))
                if i.input.purpose == "worker-grace" else i for i in due]

    async def _consumers_of_tasks(self) -> list[ConsumerView] | None:
        """The tasks stream's consumers, looked at most once a second (None: unreadable)."""
        assert self.nc is not None
        now = asyncio.get_running_loop().time()
        at, views = self._task_consumers
        if now - at < _CONSUMERS_FRESH:
            return views
        try:
            infos = await self.nc.jetstream().consumers_info(self.subjects.tasks_stream)
        except Exception as exc:  # a verdict of "unknown" beats a timer that never fires
            log.debug("looking at the task consumers failed: %s", exc)
            views = None
        else:
            views = [ConsumerView.of(info) for info in infos]
        self._task_consumers = (now, views)
        return views

    async def _timer_batch(self, msgs: list[Msg]) -> None:
        """Timers not yet due are parked; those due are decided, as one batch."""
        processor = self.processor
        assert processor is not None
        due: list[Item] = []
        now = self.clock()
        for msg in msgs:
            try:
                item = processor.parse(msg)
            except Malformed as exc:
                await processor.dead_letter(msg, exc.info)
                continue
            timer = item.input
            assert isinstance(timer, TimerFired)
            wait = (timer.due - now).total_seconds()
            if wait > 0.005:
                # Not yet: by default JetStream hands it back when due.
                await self.timers.park(msg, due=timer.due, wait=wait,
                                       defer=processor.settle_later)
            else:
                due.append(item)
        due = await self._with_workers_seen(due)
        try:
            await processor.process(due)
        except asyncio.CancelledError:
            await self._hand_back([i.msg for i in due if i.msg is not None])
            raise
        except Exception:
            log.exception("timer batch failed; timers will be redelivered")
