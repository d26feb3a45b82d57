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
import json
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import nats
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

from contracts.client import NatsflowClient
from contracts.connect import NatsSettings, connect
from contracts.models import WorkflowState

pytestmark = pytest.mark.faults

#: Workflows accepted over the whole run.
TOTAL = 100
#: Seconds a node stays SIGSTOPped.
PAUSE = 3.0


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NatsNode]]:
    with cluster(tmp_path) as found:
        yield found


async def leader_of(d: Deployment, stream: str) -> str:
    info = await d.nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


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


async def run_with_faults(d: Deployment, load: Load, nodes: list[NatsNode]) -> None:
    """Kill the INBOX leader mid-run and start it again, then pause another node."""
    s = d.settings.subjects
    by_name = {n.name: n for n in nodes}
    await load.until_accepted(TOTAL // 4, after=0.0, timeout=30)

    killed = by_name[await leader_of(d, s.inbox_stream)]
    await asyncio.to_thread(killed.end, signal.SIGKILL)
    await load.until_accepted(TOTAL // 2, after=0.0, timeout=30)
    await asyncio.to_thread(killed.start)
    await wait_current(d, streams_of(d))

    paused = by_name[await leader_of(d, f"KV_{s.workflows_bucket}")]
    if paused is killed:
        paused = next(n for n in nodes if n is not killed)
    paused.pause()
    await asyncio.sleep(PAUSE)
    paused.resume()
    await load.until_accepted(TOTAL, after=0.0, timeout=40)
    await load.stop()


def streams_of(d: Deployment) -> list[str]:
    s = d.settings.subjects
    return [s.inbox_stream, s.tasks_stream, s.events_stream, s.dlq_stream,
            f"KV_{s.workflows_bucket}"]


async def test_an_r3_deployment_survives_a_killed_leader_and_a_stopped_node(
        nodes: list[NatsNode], prefix: str) -> None:
    urls = [n.url for n in nodes]
    await wait_for_meta_leader(urls)
    async with deployment(urls, prefix, replicas=3, request_timeout=8.0) as d:
        for stream in streams_of(d):  # the worker's declarations included
            info = await d.nc.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3, (stream, info.config.num_replicas)
        async with Load(d, "wf", every=0.05) as load:
            await run_with_faults(d, load, nodes)
        assert all(a.status == 503 for a in load.answers if a.status >= 300), \
            {(a.status, a.body.get("code")) for a in load.answers}
        accepted = load.accepted()
        await wait_terminal(d.client, accepted, timeout=45)
        assert await d.check(accepted) == []
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
