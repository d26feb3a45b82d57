"""A three-node NATS cluster on loopback, the deployment at R3, nodes failing under load.

The INBOX stream's leader is SIGKILLed mid-run and started again; then another node is
SIGSTOPped for a few seconds and continued. A majority stays reachable throughout, so
every create answered 2xx completes and passes the promise checker. Then two of the
three nodes are killed: with no majority a create must fail loudly (a 503 problem),
never be acknowledged.

Services started together on the cluster (as compose starts them) all come up, and no
stream is created at one replica count and scaled to another because of start order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.aio.client
import nats.errors
import nats.js.errors
import pytest
from fault_nats import (
    Deployment,
    Load,
    NatsNode,
    cluster,
    deployment,
    fan_in,
    wait_for_meta_leader,
    wait_terminal,
)
from fault_procs import Service, supervise
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect
from transport.consume import ConsumerStalled, PullConsumer

pytestmark = pytest.mark.faults

#: Workflows accepted over the whole run.
TOTAL = 100
#: Seconds the hung node stays SIGSTOPped: longer than a raft election timeout, as a
#: hung machine would be.
HUNG = 10.0
#: Seconds after the last leader election within which steps must succeed again: how
#: fast natsflow takes up the new leaders (pull requests asked again, publishes retried).
PROGRESS_WITHIN = 2.0
#: Seconds after the last leader election within which workflows must finish again.
#: Looser than the steps, and not natsflow's reaction alone: when the group elected last
#: is one that does not refuse creates (a task consumer), the gateway and the engine go
#: on accepting and dispatching while it has no leader, and the first completion waits
#: until the tasks queued ahead of its last step are worked off. Measured: a task
#: consumer re-elected 7.0 s after SIGCONT, about 260 tasks queued, the worker pulling
#: again at once, the first completion 2.6 s after the election (6.1 s in one CI run).
#: nats-server itself takes up to ~8 s to re-elect a group after a hung follower's
#: SIGCONT, with 24 raft groups (before priorities, limits, triggers) as with 60.
RESUME_WITHIN = 10.0
#: An election followed by this many quiet seconds ends a fault's elections, once every
#: group has a leader: quiet alone is no sign, a raft election timeout (4-9 s) is longer.
SETTLED = 3.0


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NatsNode]]:
    with cluster(tmp_path) as found:
        yield found


async def leader_of(d: Deployment, stream: str) -> str:
    info = await d.nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def leaders(d: Deployment) -> dict[str, str]:
    """Leader of every stream (buckets included) and consumer of the deployment."""
    js = d.nc.jetstream()
    found: dict[str, str] = {}
    for info in await js.streams_info():
        name = info.config.name or ""
        if d.settings.prefix.lower() not in name.lower():
            continue
        found[name] = info.cluster.leader if info.cluster and info.cluster.leader else ""
        for consumer in await js.consumers_info(name):
            c = consumer.cluster
            found[f"{name}/{consumer.name}"] = c.leader if c and c.leader else ""
    return found


async def replicated(d: Deployment) -> list[str]:
    """The deployment's groups that have replicas on other nodes (not the R1 ephemeral
    consumers of a scan or a watch, which die with their node), named as by
    :func:`leaders`."""
    js = d.nc.jetstream()
    found: list[str] = []
    for info in await js.streams_info():
        name = info.config.name or ""
        if d.settings.prefix.lower() not in name.lower():
            continue
        if info.cluster is not None and info.cluster.replicas:
            found.append(name)
        found += [f"{name}/{c.name}" for c in await js.consumers_info(name)
                  if c.cluster is not None and c.cluster.replicas]
    return found


async def all_led(d: Deployment, groups: Iterable[str]) -> bool:
    """Whether every one of ``groups`` (as :func:`leaders` names them) has a leader now;
    one gone since counts as led."""
    js = d.nc.jetstream(timeout=1.0)
    for group in groups:
        stream, _, consumer = group.partition("/")
        try:
            info = await (js.consumer_info(stream, consumer) if consumer
                          else js.stream_info(stream))
        except nats.js.errors.NotFoundError:
            continue
        except nats.errors.Error:  # no leader to answer, or it says so
            return False
        if info.cluster is None or not info.cluster.leader:
            return False
    return True


async def wait_current(d: Deployment, streams: Sequence[str], *, timeout: float = 20.0
                       ) -> None:
    """Wait until every stream has a leader and all its replicas are current."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    js = d.nc.jetstream()
    for stream in streams:
        while True:
            try:
                info = await js.stream_info(stream)
                c = info.cluster
                if c is not None and c.leader and c.replicas and len(c.replicas) == 2 \
                        and all(r.current for r in c.replicas):
                    break
            except Exception:  # no leader yet: the request times out or errors
                c = None
            assert loop.time() < deadline, f"{stream} replicas not current in {timeout}s: {c}"
            await asyncio.sleep(0.2)


class Observer:
    """Workflow completions and leader elections, as a node the faults spare sees them.

    Times are the event loop's, like the load's answers. A completion is a
    ``workflow.completed`` event, progress a ``step.succeeded`` one; an election is
    JetStream's ``LEADER_ELECTED`` advisory for one of the deployment's streams (buckets
    included) or consumers.
    """

    def __init__(self, d: Deployment, node: NatsNode) -> None:
        self.d = d
        self.node = node
        self.completed: list[float] = []
        self.progressed: list[float] = []
        self.elected: list[tuple[float, str]] = []
        self.nc: nats.aio.client.Client | None = None

    async def __aenter__(self) -> Observer:
        loop = asyncio.get_running_loop()
        prefix = self.d.settings.prefix.lower()

        async def completed(msg: Msg) -> None:
            self.completed.append(loop.time())

        async def progressed(msg: Msg) -> None:
            self.progressed.append(loop.time())

        async def elected(msg: Msg) -> None:
            group = msg.subject.split(".", 5)[-1]  # <stream> or <stream>.<consumer>
            if prefix in group.lower():
                self.elected.append((loop.time(), group))

        self.nc = await nats.connect(servers=[self.node.url])
        await self.nc.subscribe(self.d.settings.subjects.events_of("*", "workflow.completed"),
                                cb=completed)
        await self.nc.subscribe(self.d.settings.subjects.events_of("*", "step.succeeded"),
                                cb=progressed)
        await self.nc.subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*", cb=elected)
        await self.nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.*.*", cb=elected)
        await self.nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.nc is not None
        await self.nc.close()


@dataclass(frozen=True)
class Disruption:
    """What one fault cost, measured (seconds, loop time)."""

    what: str
    at: float  # the fault began
    ended: float  # the fault's cause was gone (a kill: at once; a pause: SIGCONT)
    elections: int  # leader elections of the deployment's groups from ``at`` on
    elected: float  # the last of them (``ended`` if there was none)
    progressed: float  # the first step that succeeded after it
    resumed: float  # the first workflow completion after it
    stall: float  # longest time without a completion, from ``at`` to ``resumed``
    unavailable: int  # creates sent from ``at`` to ``resumed`` answered 503

    def __str__(self) -> str:
        return (f"{self.what}: {self.elections} elections, the last "
                f"{self.elected - self.ended:.1f}s after the fault ended; steps resumed "
                f"{self.progressed - self.elected:.1f}s and completions "
                f"{self.resumed - self.elected:.1f}s after it; longest stall "
                f"{self.stall:.1f}s; {self.unavailable} creates answered 503")


async def measure(obs: Observer, load: Load, what: str, *, at: float, ended: float,
                  groups: Sequence[str], timeout: float = 45.0) -> Disruption:
    """Wait until the elections after a fault are over (every one of ``groups`` has a
    leader, and no election for :data:`SETTLED` seconds) and workflows complete again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        elections = [t for t, _ in obs.elected if t >= at]
        last = max(elections, default=ended)
        quiet = loop.time() - max(last, ended) > SETTLED
        if quiet and any(t > last for t in obs.completed) \
                and any(t > last for t in obs.progressed) and await all_led(obs.d, groups) \
                and len([t for t, _ in obs.elected if t >= at]) == len(elections):
            break  # (and no election came while the leaders were looked up)
        assert loop.time() < deadline, (
            f"{what}: no completion after the elections in {timeout}s: "
            f"{[(round(t - at, 1), g) for t, g in obs.elected if t >= at]}")
        await asyncio.sleep(0.1)
    resumed = min(t for t in obs.completed if t > last)
    progressed = min(t for t in obs.progressed if t > last)
    marks = [at, *sorted(t for t in obs.completed if at < t < resumed), resumed]
    stall = max(b - a for a, b in itertools.pairwise(marks))
    unavailable = sum(1 for a in load.answers if a.status == 503 and at <= a.sent <= resumed)
    return Disruption(what, at, ended, len(elections), last, progressed, resumed, stall,
                      unavailable)


async def run_with_faults(d: Deployment, load: Load, nodes: list[NatsNode]
                          ) -> list[Disruption]:
    """Kill the INBOX leader mid-run and start it again, then hang it for ``HUNG``
    seconds once it is back as a follower that leads nothing."""
    loop = asyncio.get_running_loop()
    s = d.settings.subjects
    by_name = {n.name: n for n in nodes}
    await load.until_accepted(TOTAL // 4, after=0.0, timeout=30)

    killed = by_name[await leader_of(d, s.inbox_stream)]
    spared = next(n for n in nodes if n is not killed)
    async with Observer(d, spared) as obs:
        groups = await replicated(d)
        at = loop.time()
        await asyncio.to_thread(killed.end, signal.SIGKILL)
        kill = await measure(obs, load, "the INBOX leader SIGKILLed", at=at, ended=at,
                             groups=groups)
        await load.until_accepted(TOTAL // 2, after=0.0, timeout=30)
        await asyncio.to_thread(killed.start)
        await wait_current(d, streams_of(d))

        # Back, it is a follower: it led nothing while it was dead.
        hung = killed
        led = [group for group, leader in (await leaders(d)).items() if leader == hung.name]
        groups = await replicated(d)
        at = loop.time()
        hung.pause()
        await asyncio.sleep(HUNG)
        ended = loop.time()
        hung.resume()
        pause = await measure(obs, load, f"a follower leading {len(led)} groups SIGSTOPped "
                              f"for {HUNG:.0f}s", at=at, ended=ended, groups=groups)
    await load.until_accepted(TOTAL, after=0.0, timeout=40)
    await load.stop()
    return [kill, pause]


def streams_of(d: Deployment) -> list[str]:
    s = d.settings.subjects
    return [s.inbox_stream, s.tasks_stream, s.events_stream, s.dlq_stream,
            f"KV_{s.workflows_bucket}"]


@pytest.mark.timeout(300)
async def test_an_r3_deployment_survives_a_killed_leader_and_a_stopped_node(
        nodes: list[NatsNode], prefix: str) -> None:
    urls = [n.url for n in nodes]
    await wait_for_meta_leader(urls)
    async with deployment(urls, prefix, replicas=3, request_timeout=8.0) as d:
        for stream in streams_of(d):  # the worker's declarations included
            info = await d.nc.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3, (stream, info.config.num_replicas)
        async with Load(d, "wf", every=0.05) as load:
            costs = await run_with_faults(d, load, nodes)
        for cost in costs:
            print(cost)  # what docs/guarantees.md reports, with -s
        for cost in costs:
            assert cost.progressed - cost.elected <= PROGRESS_WITHIN, [str(c) for c in costs]
            assert cost.resumed - cost.elected <= RESUME_WITHIN, [str(c) for c in costs]
        assert all(a.status == 503 for a in load.answers if a.status >= 300), \
            {(a.status, a.body.get("code")) for a in load.answers}
        accepted = load.accepted()
        await wait_terminal(d.client, accepted, timeout=60)
        # A record is stored before its outbox's events are published (docs/guarantees.md),
        # so right after the elections a terminal record's last events may still be on
        # their way (publishes retried until the events stream has a leader again): the
        # promises must hold once the outboxes have drained, not at the first look.
        loop = asyncio.get_running_loop()
        settle = loop.time() + 30
        violations = await d.check(accepted)
        while violations and loop.time() < settle:
            await asyncio.sleep(1.0)
            violations = await d.check(accepted)
        assert violations == []
        for wid in accepted:
            status = (await d.client.get(wid)).status
            assert status is not None and status.state == WorkflowState.COMPLETED, wid

        # No majority: a create fails loudly.
        survivor, *doomed = nodes
        for node in doomed:
            await asyncio.to_thread(node.end, signal.SIGKILL)
        await asyncio.sleep(1.0)  # whoever was on a dead node reconnects to the survivor
        r = await d.http.post("/workflows", json=fan_in(0, "no-quorum"))
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) > 0
        assert survivor.running


async def _complete_one(settings: NatsSettings, tag: str) -> None:
    """One fan-in workflow through the deployment, to its end."""
    nc = await connect(settings, name="fault-test")
    try:
        client = NatsflowClient(nc, settings.subjects)
        await client.create(fan_in(0, tag))
        await wait_terminal(client, [f"{tag}-0"], timeout=30)
        status = (await client.get(f"{tag}-0")).status
        assert status is not None and status.state == WorkflowState.COMPLETED, status
    finally:
        await nc.close()


async def _up(svc: Service, *, timeout: float = 60.0) -> None:
    """Until ``svc`` has logged its ready line; fail at once if it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not svc.ready():
        assert svc.alive(), f"{svc.name} exited:\n{svc.logs()}"
        assert loop.time() < deadline, f"{svc.name} not ready in {timeout}s:\n{svc.logs()}"
        await asyncio.sleep(0.05)


def _alive_without_tracebacks(*services: Service) -> None:
    for svc in services:
        assert svc.alive() and not svc.deaths, f"{svc.name} exited {svc.deaths}:\n{svc.logs()}"
        assert "Traceback" not in svc.logs(tail=100_000), svc.logs()


async def test_an_orchestrator_started_after_an_r1_worker_waits_out_the_scaling(
        nodes: list[NatsNode], prefix: str, tmp_path: Path) -> None:
    """The worker, started without ``--replicas``, makes the tasks stream at R1; the
    orchestrator scales it to R3 and meets ``503 insufficient resources`` on the tasks
    consumers of its built-in steps for a while: it must wait that out, not exit."""
    urls = [n.url for n in nodes]
    await wait_for_meta_leader(urls)
    settings = NatsSettings(servers=urls, prefix=prefix)
    worker = Service("worker", ["worker", "natsflow.demo:worker"], settings, tmp_path,
                     ready_line="serving", restart=False)
    orch = Service("orchestrator", ["orchestrator", "--replicas", "3"], settings, tmp_path,
                   ready_line="orchestrator ready", restart=False)
    async with supervise(worker):
        await _up(worker)
        async with supervise(orch):
            await _up(orch, timeout=90)
            await _complete_one(settings, "scaled")
            _alive_without_tracebacks(worker, orch)
    nc = await connect(settings, name="fault-test")
    try:
        info = await nc.jetstream().stream_info(settings.subjects.tasks_stream)
        assert info.config.num_replicas == 3
    finally:
        await nc.close()


async def test_services_of_an_r3_deployment_create_every_stream_at_r3(
        nodes: list[NatsNode], prefix: str, tmp_path: Path) -> None:
    """``NATSFLOW_REPLICAS=3`` for every service: whoever starts first creates the
    streams at R3, so none is ever created or updated at another count."""
    urls = [n.url for n in nodes]
    await wait_for_meta_leader(urls)
    settings = NatsSettings(servers=urls, prefix=prefix)
    streams = {settings.subjects.tasks_stream, settings.subjects.dlq_stream}
    made: list[tuple[str, int]] = []  # (API subject, num_replicas) of each create/update

    async def audit(msg: Msg) -> None:
        advisory = json.loads(msg.data)
        subject = advisory.get("subject", "")
        if ".STREAM.CREATE." in subject or ".STREAM.UPDATE." in subject:
            config = json.loads(advisory.get("response") or "{}").get("config")
            if config is not None:  # an error made nothing
                made.append((subject, config.get("num_replicas", 1)))

    watcher = await nats.connect(servers=urls)
    env = {"NATSFLOW_REPLICAS": "3"}
    try:
        await watcher.subscribe("$JS.EVENT.ADVISORY.API", cb=audit)
        await watcher.flush()
        worker = Service("worker", ["worker", "natsflow.demo:worker"], settings, tmp_path,
                         env=env, ready_line="serving", restart=False)
        orch = Service("orchestrator", ["orchestrator"], settings, tmp_path, env=env,
                       ready_line="orchestrator ready", restart=False)
        # The worker first: it creates the tasks and dead-letter streams.
        async with supervise(worker):
            await _up(worker)
            js = watcher.jetstream()
            for stream in sorted(streams):
                assert (await js.stream_info(stream)).config.num_replicas == 3, stream
            async with supervise(orch):
                await _up(orch)
                await _complete_one(settings, "r3")
                _alive_without_tracebacks(worker, orch)
        await watcher.flush()
        ours = [(subject, n) for subject, n in made if subject.rsplit(".", 1)[-1] in streams]
        assert ours and all(n == 3 for _, n in ours), ours
    finally:
        await watcher.close()


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_pulls_resume_at_once_when_the_consumer_leader_is_lost(
        nodes: list[NatsNode], prefix: str, fault: str) -> None:
    """The pull requests the consumer's leader held are lost with it (SIGKILL) or stuck
    in it (SIGSTOP); the puller, on a server that lives, asks the new leader as soon as
    it is elected, not after the old requests' heartbeats have been missed long enough."""
    urls = [n.url for n in nodes]
    await wait_for_meta_leader(urls)
    loop = asyncio.get_running_loop()
    stream = f"{prefix.upper()}_P"
    admin = await nats.connect(servers=urls)
    js = admin.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.p"], num_replicas=3))
    await js.add_consumer(stream, ConsumerConfig(durable_name="c",
                                                 ack_policy=AckPolicy.EXPLICIT))
    info = await js.consumer_info(stream, "c")
    assert info.cluster is not None and info.cluster.leader
    doomed = next(n for n in nodes if n.name == info.cluster.leader)
    kept = next(n for n in nodes if n is not doomed)
    await admin.close()

    nc = await nats.connect(servers=[kept.url])  # only a server that lives
    elected: list[float] = []

    async def on_elected(msg: Msg) -> None:
        elected.append(loop.time())

    await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.c",
                       cb=on_elected)
    consumer = await PullConsumer(nc, stream, "c", batch=4).start()
    try:
        assert await consumer.next_batch(4, timeout=0.5) == []  # the leader holds the pulls
        if fault == "killed":
            await asyncio.to_thread(doomed.end, signal.SIGKILL)
        else:
            doomed.pause()  # resumed (and killed) by the nodes fixture
        js = nc.jetstream()
        deadline = loop.time() + 30
        while True:  # until the stream has a leader again
            try:
                await js.publish(f"{prefix}.p", b"after", timeout=1.0)
                break
            except nats.errors.Error:
                assert loop.time() < deadline, "the stream has no leader"
        published = loop.time()
        got: list[Msg] = []
        while not got:
            with contextlib.suppress(ConsumerStalled):  # refused between leaders
                got = await consumer.next_batch(4, timeout=0.5)
            assert elected or loop.time() - published < 30, "no consumer leader elected"
            assert loop.time() - max([published, *elected]) < 30, "nothing delivered"
        assert [m.data for m in got] == [b"after"]
        late = loop.time() - max([published, *elected])
        print(f"{fault}: delivered {late:.2f}s after the new leader")
        assert late <= RESUME_WITHIN, f"delivered {late:.1f}s after the new leader"
    finally:
        await consumer.stop()
        await nc.close()
