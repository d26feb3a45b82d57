"""WorkflowEnvironment: a running natsflow for one test, with a clock that skips."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client

from contracts.models import (
    WORKFLOW_TERMINAL,
    Event,
    StepState,
    WorkflowConfig,
    WorkflowState,
    WorkflowStatus,
)
from natsflow.client import NatsflowClient
from natsflow.worker import Worker
from orchestrator import Orchestrator
from transport.connect import NatsSettings, connect

from ._clock import TimeSkippingClock
from ._nats import EmbeddedNatsProvider, ExternalNats, NatsProvider

__all__ = ["WaitFailed", "WorkflowEnvironment"]

#: Seconds between two looks at a workflow (and at whether anything is happening).
_POLL = 0.01


class WaitFailed(AssertionError):
    """A workflow did not reach the awaited state: it ended otherwise, or time ran out.

    An ``AssertionError``, so that pytest reports it as the failed expectation it is.
    """

    def __init__(self, message: str, status: WorkflowStatus | None) -> None:
        super().__init__(message)
        self.status = status


class WorkflowEnvironment:
    """NATS, an orchestrator in this process, a client, and a clock that skips.

    Start one with :meth:`start`; the pytest fixture ``natsflow_env`` does it for you.

    Time: the orchestrator takes ``now`` from :attr:`clock`, real time plus the time
    skipped so far, and every durable timer (sleep steps, retry backoff, timeouts,
    heartbeat deadlines) waits in that clock rather than in JetStream. :meth:`sleep`
    moves the clock forward and fires each timer it passes, in order. With
    ``auto_skip`` (the default), while :meth:`wait` waits and nothing else is
    happening (no message in flight, no task running or queued), the clock jumps
    straight to the next timer, as Temporal's time-skipping test server does.

    Attributes:
        settings: Where NATS is and this environment's own subject prefix.
        client: The reference client (:class:`natsflow.client.NatsflowClient`).
        nc: The client's NATS connection.
        clock: The environment's clock.
        orchestrator: The orchestrator running in this process.
        auto_skip: Whether :meth:`wait` skips to the next timer when all is quiet.
    """

    def __init__(self, settings: NatsSettings, *, nc: Client, clock: TimeSkippingClock,
                 orchestrator: Orchestrator, auto_skip: bool, webhooks: bool) -> None:
        self.settings = settings
        self.nc = nc
        self.client = NatsflowClient(nc, settings.subjects)
        self.clock = clock
        self.orchestrator = orchestrator
        self.auto_skip = auto_skip
        self._webhooks = webhooks
        self._workers: list[contextlib.AbstractAsyncContextManager[Worker]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, *, nats: NatsProvider | None = None,
                    servers: list[str] | str | None = None, prefix: str | None = None,
                    workers: Sequence[Worker] = (), auto_skip: bool = True,
                    builtins: bool = True, webhooks: bool = False
                    ) -> AsyncIterator[WorkflowEnvironment]:
        """Start NATS (unless given), an orchestrator and a client; stop them on exit.

        Args:
            nats: Where NATS comes from (default: an embedded ``nats-server`` of its own).
            servers: Use the NATS already running at these URLs instead.
            prefix: The deployment's subject prefix (default: a fresh random one, so that
                environments sharing a server never see each other).
            workers: Workers to serve while the environment runs (more with
                :meth:`run_worker`).
            auto_skip: Let :meth:`wait` skip to the next timer when all is quiet.
            builtins: Serve natsflow's built-in steps (``natsflow.request`` and others).
            webhooks: Deliver webhooks (off: a test's webhooks go nowhere).
        """
        if servers is not None:
            nats = ExternalNats(servers)
        provider = nats if nats is not None else EmbeddedNatsProvider()
        async with contextlib.AsyncExitStack() as stack:
            urls = await asyncio.to_thread(provider.start)
            stack.push_async_callback(asyncio.to_thread, provider.stop)
            settings = NatsSettings(servers=urls, prefix=prefix or "t" + uuid.uuid4().hex[:12])
            nc = await connect(settings, name="natsflow-testing")
            stack.push_async_callback(nc.close)
            clock = TimeSkippingClock()
            orch = Orchestrator(settings, clock=clock, timers=clock, builtins=builtins,
                                webhooks=webhooks)
            await orch.start()
            env = cls(settings, nc=nc, clock=clock, orchestrator=orch, auto_skip=auto_skip,
                      webhooks=webhooks)
            stack.push_async_callback(env._shut_down)
            for worker in workers:
                await env.run_worker(worker)
            yield env

    async def _shut_down(self) -> None:
        """Stop the workers and the orchestrator side by side: each stop waits out a
        fetch, and the deployment is thrown away after."""
        # First: held timers go back through the orchestrator's connection.
        await self.clock.close()
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.__aexit__(None, None, None) for w in workers),
                             self.orchestrator.stop())

    # -- workers ----------------------------------------------------------------------
    async def run_worker(self, worker: Worker) -> Worker:
        """Serve ``worker``'s task types until the environment stops.

        Register its handlers (``@worker.task(...)``) before: a running worker takes no
        new ones. Returns the worker once it is fetching.
        """
        running = worker.running(self.settings)
        await running.__aenter__()
        self._workers.append(running)
        return worker

    # -- workflows --------------------------------------------------------------------
    async def submit(self, config: WorkflowConfig | dict[str, Any], *,
                     input: dict[str, Any] | None = None) -> str:
        """Create and start a workflow; its id (generated when the config has none).

        Args:
            config: The workflow (as in a YAML file, or a ``WorkflowConfig``).
            input: Input merged over the config's own.
        """
        if not isinstance(config, WorkflowConfig):
            config = WorkflowConfig.model_validate(config)
        if input:
            config = config.model_copy(update={"input": {**config.input, **input}})
        reply = await self.client.create(config)
        return reply.id

    async def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's status now.

        Raises:
            contracts.errors.WorkflowNotFound: no workflow has that id.
        """
        status = (await self.client.get(workflow_id)).status
        assert status is not None  # the orchestrator answers unknown ids with an error
        return status

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` (a wait step for it takes its payload as output)."""
        await self.client.signal(workflow_id, name, payload)

    async def wait(self, workflow_id: str, state: WorkflowState | StepState | str | None = None,
                   *, step: str | None = None, timeout: float = 30.0) -> WorkflowStatus:
        """Wait until the workflow (or one of its steps) is in ``state``; its status then.

        Without ``state``, wait until the workflow has ended, however it ended. While
        waiting, with ``auto_skip``, a quiet environment skips to its next timer.

        Args:
            workflow_id: The workflow.
            state: A workflow state, or with ``step`` a step state.
            step: The step whose state to wait for.
            timeout: Real seconds to wait at most.

        Raises:
            WaitFailed: the workflow ended in another state, or ``timeout`` passed.
        """
        wanted: WorkflowState | StepState | None = None
        if state is not None:
            wanted = StepState(state) if step is not None else WorkflowState(state)
        what = "ended" if wanted is None else f"{step or 'workflow'} {wanted.value}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settled = False
        while True:
            status = await self.get(workflow_id)
            current = status.step(step).state if step is not None else status.state
            if (current == wanted) if wanted is not None else (
                    status.state in WORKFLOW_TERMINAL):
                return status
            if status.state in WORKFLOW_TERMINAL:
                raise WaitFailed(f"{workflow_id} {status.state.value} before it was {what}"
                                 f"{_error_of(status)}", status)
            soonest = self.clock.next_due()
            if settled and soonest is not None:
                # Quiet, and the status read since then is not the one awaited: only a
                # timer can move it on.
                await self.clock.advance_to(soonest)
                settled = False
                continue
            if loop.time() > deadline:
                raise WaitFailed(f"{workflow_id} not {what} after {timeout}s: it is "
                                 f"{status.state.value} ({_steps_of(status)})", status)
            settled = self.auto_skip and soonest is not None and await self._quiet()
            if not settled:
                await asyncio.sleep(_POLL)

    async def events(self, workflow_id: str, *, timeout: float = 10.0) -> list[Event]:
        """The workflow's events so far, in ``seq`` order."""
        last = (await self.get(workflow_id)).last_seq
        events: list[Event] = []
        async with asyncio.timeout(timeout):
            while not events or events[-1].seq < last:
                after = events[-1].seq if events else 0
                feed = self.client.events(workflow_id, follow=True, after=after)
                async with aclosing(feed):
                    async for event in feed:
                        events.append(event)
                        if event.seq >= last:
                            break
        return events

    # -- time -----------------------------------------------------------------------
    def now(self) -> datetime:
        """The environment's time (what the orchestrator decides with)."""
        return self.clock.now()

    async def sleep(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
                    days: float = 0.0, settle: float = 5.0) -> None:
        """Let that much time pass at once: every timer due on the way fires, in order.

        Before each timer, and at the end, it lets what is happening finish (a task
        running, a result on its way) for up to ``settle`` real seconds, so that a timer
        armed on the way, e.g. the backoff of a retry, fires too if it falls inside
        the span. A task still running when time moves past its ``timeout`` (or its
        ``heartbeat_timeout``) times out, as it would have after that much time.

        Args:
            seconds, minutes, hours, days: How much time passes, in all.
            settle: Real seconds to let activity finish before each timer; lower it when
                a handler hangs on purpose (to test a timeout).
        """
        target = self.now() + timedelta(seconds=seconds, minutes=minutes, hours=hours,
                                        days=days)
        while True:
            await self.wait_quiet(settle)
            soonest = self.clock.next_due()
            if soonest is None or soonest > target:
                break
            await self.clock.advance_to(soonest)
        await self.clock.advance_to(target)
        await self.wait_quiet(settle)

    async def wait_quiet(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is happening but timers waiting; False if ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._quiet():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    async def _quiet(self) -> bool:
        """No message in flight anywhere natsflow reads, except the timers held.

        Every hand-over publishes before it acknowledges (the engine its outbox, a
        worker its result), so a snapshot that finds every consumer empty and no stream
        grown while it looked has caught the system between two things happening.
        """
        s = self.settings.subjects
        js = self.nc.jetstream()
        streams = [s.inbox_stream, s.tasks_stream]
        if self._webhooks:
            streams.append(s.webhooks_stream)

        async def last_seqs() -> list[int]:
            return [(await js.stream_info(name)).state.last_seq for name in streams]

        before = await last_seqs()
        timers = set(s.timer_consumers)
        held = 0  # in the timer consumers, which hold the parked timers among them
        for name in streams:
            for info in await js.consumers_info(name):
                busy = (info.num_pending or 0) + (info.num_ack_pending or 0)
                if name == s.inbox_stream and info.name in timers:
                    held += busy
                elif busy > 0:
                    return False
        return held <= self.clock.parked and before == await last_seqs()


def _error_of(status: WorkflowStatus) -> str:
    return f": {status.error.code}: {status.error.message}" if status.error else ""


def _steps_of(status: WorkflowStatus) -> str:
    return ", ".join(f"{s.id} {s.state.value}" for s in status.steps)
