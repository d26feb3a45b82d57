"""Least privilege on NATS: every role does its job, and is refused everything else.

One nats-server for the module, configured as ``natsflow nats-config`` configures one
(the same authorization block, bcrypt passwords, one user per role), with a deployment
prefix of its own. The services run with their own role's credentials, exactly as
``natsflow dev --secure`` runs them; the refusals are the server's own, seen on the
connection of the user it refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from helpers import read_dead_letters, running_demo_worker, wait_for
from nats.aio.client import Client

from contracts.keys import CreateKeyRequest, Scope
from contracts.messages import TaskMessage, TaskSucceeded
from contracts.models import WorkflowState
from contracts.subjects import Subjects
from gateway import create_app
from gateway._auth import KeyAuth
from natsflow._nats_config import (
    DEFAULT_USERS,
    Auth,
    User,
    authorization_block,
    make_credentials,
)
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from orchestrator import Orchestrator
from orchestrator.index import IndexService
from transport.connect import NatsSettings
from transport.keys import KeyStore
from transport.streams import Topology

pytestmark = pytest.mark.timeout(180)

#: The users of the deployment: the defaults, a worker of another task type, and a
#: second submitter whose replies the first must not read.
USERS = (*DEFAULT_USERS, User(DEFAULT_USERS[3].role, "other-worker", ("other.job",)),
         User(DEFAULT_USERS[4].role, "submitter-b"))
ROLES_BUT_ORCHESTRATOR = [u.name for u in USERS if u.name != "orchestrator"]


@dataclass
class Secure:
    """The secured server, the deployment's names and each user's settings."""

    server: EmbeddedNats
    subjects: Subjects
    users: dict[str, NatsSettings]

    def settings(self, user: str) -> NatsSettings:
        return self.users[user]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    subjects = Subjects("sec" + uuid.uuid4().hex[:8])
    creds = make_credentials(USERS, Auth.PASSWORD, bcrypt_rounds=4)
    store = tmp_path_factory.mktemp("nats-secure")
    server = EmbeddedNats(store, log_file=Path(store) / "nats.log",
                          config=authorization_block(creds, subjects))
    server.start()
    users = {c.user.name: NatsSettings(
        servers=[server.url], prefix=subjects.prefix, user=c.user.name, password=c.secret,
        inbox_prefix=c.user.permissions(subjects).inbox) for c in creds}
    try:
        yield Secure(server, subjects, users)
    finally:
        server.stop()


@dataclass
class Conn:
    """One user's plain nats-py connection, with the server's refusals it got."""

    nc: Client
    refusals: list[str] = field(default_factory=list)

    async def refused(self, subject: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Run ``action`` and wait for the server to refuse ``subject`` to this user."""
        seen = len(self.refusals)
        try:
            await action()
            await self.nc.flush(timeout=2)
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.NoRespondersError):
            pass  # a refused request is simply never answered
        await wait_for(lambda: any(f'"{subject.lower()}"' in r.lower()
                                   for r in self.refusals[seen:]),
                       timeout=5, what=f"the server refusing {subject}")

    async def publish_refused(self, subject: str, payload: bytes = b"{}") -> None:
        await self.refused(subject, lambda: self.nc.publish(subject, payload))

    async def subscribe_refused(self, subject: str) -> None:
        await self.refused(subject, lambda: self.nc.subscribe(subject))

    async def request_refused(self, subject: str, payload: bytes = b"{}") -> None:
        await self.refused(subject, lambda: self.nc.request(subject, payload, timeout=1))


@asynccontextmanager
async def connected(secure: Secure, user: str) -> AsyncIterator[Conn]:
    settings = secure.settings(user)
    conn = Conn(nc=Client())

    async def on_error(exc: Exception) -> None:
        conn.refusals.append(str(exc))

    await conn.nc.connect(servers=settings.servers, user=settings.user,
                          password=settings.password, inbox_prefix=settings.inbox_prefix,
                          error_cb=on_error, allow_reconnect=False)
    try:
        yield conn
    finally:
        await conn.nc.close()


@pytest.fixture
async def deployment(secure: Secure) -> AsyncIterator[Orchestrator]:
    """The orchestrator, the index and the demo worker, each as its own user."""
    async with AsyncExitStack() as stack:
        orch = Orchestrator(secure.settings("orchestrator"), stop_grace=2.0)
        await orch.start()
        stack.push_async_callback(orch.stop)
        index = IndexService(secure.settings("index"))
        await index.start()
        stack.push_async_callback(index.stop)
        await stack.enter_async_context(running_demo_worker(secure.settings("worker")))
        yield orch


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "natsflow.connect"]


async def test_every_role_does_its_job_and_is_refused_nothing(
        secure: Secure, deployment: Orchestrator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="natsflow.connect")
    s = secure.subjects
    run = uuid.uuid4().hex[:8]
    async with connected(secure, "gateway") as gw, connected(secure, "submitter") as sub, \
            connected(secure, "watcher") as watch:
        gateway = NatsflowClient(gw.nc, s)
        await gateway.put_definition("child", {"name": "child", "steps": [
            {"id": "twice", "task": "demo.add", "input": {"a": "${input.n}", "b": "${input.n}"}}]})
        # The gateway itself (HTTP over its own connection) creates a workflow with a
        # task chain, a map (item tokens) and a child workflow (its report's token).
        # With API keys on: an operator (here on the orchestrator's credentials) makes
        # one; the gateway watches the keys bucket and writes the key's last use back.
        async with connected(secure, "orchestrator") as op:
            keys = await KeyStore.open(op.nc.jetstream(), Topology(s))
            made = await keys.create(CreateKeyRequest(
                name=f"roles-{run}", scopes=[Scope.ADMIN], namespaces=["*"]), now=datetime.now(UTC))
        app = create_app(secure.settings("gateway"), nc=gw.nc, request_timeout=10.0,
                         auth=KeyAuth(touch_interval=0.0))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers={
                "Authorization": f"Bearer {made.key}"}) as http, app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.keys.ready.wait(), 10)
            resp = await http.post("/workflows", json={
                "name": "all-kinds", "id": f"gw-{run}", "input": {"n": 2, "xs": [1, 2, 3]},
                "steps": [
                    {"id": "sum", "task": "demo.add", "input": {"a": "${input.n}", "b": 1}},
                    {"id": "each", "kind": "map", "items": "input.xs", "step": {
                        "task": "demo.echo", "input": {"x": "${item}"}}},
                    {"id": "kid", "kind": "workflow", "definition": "child",
                     "input": {"n": "${steps.sum.output.sum}"}, "depends_on": ["sum"]}]})
            assert resp.status_code in (200, 201, 202), resp.text
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
        # A submitter submits (fire-and-forget) and creates, and reads its reply.
        submitter = NatsflowClient(sub.nc, s)
        await submitter.submit({"name": "fire", "id": f"sub-{run}", "steps": [
            {"id": "a", "task": "demo.echo", "input": {"v": 1}}]})
        created = await submitter.create({"name": "made", "id": f"made-{run}", "steps": [
            {"id": "a", "task": "demo.echo", "input": {"v": 2}}]})
        assert created.created
        # A watcher follows each to its end (events, then the status that ends them).
        watcher = NatsflowClient(watch.nc, s)
        for wid in (f"gw-{run}", f"sub-{run}", f"made-{run}"):
            final = await watcher.wait(wid, timeout=60)
            assert final.status is not None
            assert final.status.state == WorkflowState.COMPLETED, final.status.error
        done = (await watcher.get(f"gw-{run}")).status
        assert done is not None
        assert done.step("sum").output == {"sum": 3}
        assert done.step("each").output == [{"x": 1}, {"x": 2}, {"x": 3}]
        assert done.step("kid").output == {"twice": {"sum": 6}}
        # The index answers the gateway's list and bulk (a dry run touches nothing).
        listed = await gateway.list_workflows(name="all-kinds")
        assert [w.id for w in listed.items] == [f"gw-{run}"]
        bulk = await gateway.bulk("stop", dry_run=True, name="made")
        assert bulk.matched == 1
        events = [e async for e in watcher.events(f"made-{run}", follow=False)]
        assert events[-1].type.value == "workflow.completed"
        for conn in (gw, sub, watch):
            assert conn.refusals == [], conn.refusals
    assert deployment.metrics.forged_results._value.get() == 0
    assert _refusals(caplog) == []


@pytest.mark.parametrize("user", ROLES_BUT_ORCHESTRATOR)
async def test_only_the_orchestrator_writes_commands_timers_events_tasks_and_buckets(
        secure: Secure, user: str) -> None:
    s = secure.subjects
    async with connected(secure, user) as conn:
        for subject in (s.workflow_command("w1"), s.batch_command("b1"), s.timer("w1"),
                        s.event("w1", "workflow.completed"), s.task("demo.echo"),
                        s.cancel("w1"), s.webhook("w1"),
                        s.kv_put(s.workflows_bucket, "w1"), s.kv_put(s.batches_bucket, "b1"),
                        s.kv_put(s.summaries_bucket, "w1"), s.kv_put(s.secrets_bucket, "k"),
                        s.kv_put(s.definitions_bucket, "d.1"),
                        f"$JS.API.STREAM.CREATE.{s.inbox_stream}",
                        f"$JS.API.STREAM.DELETE.{s.events_stream}",
                        f"$JS.API.STREAM.PURGE.{s.tasks_stream}",
                        f"$JS.API.DIRECT.GET.KV_{s.secrets_bucket}.$KV.{s.secrets_bucket}.k"):
            await conn.publish_refused(subject)
        # Nor does anyone else listen to what carries tokens, results or commands, or
        # answer the API in the orchestrator's place.
        for subject in (s.all_tasks, s.result("w1"), s.workflow_command("w1"), s.timer("w1")):
            await conn.subscribe_refused(subject)
        await conn.subscribe_refused(s.api("workflow.get"))
        await conn.subscribe_refused(f"$SRV.PING.{s.service_name}")


async def test_a_worker_takes_only_its_own_tasks(secure: Secure,
                                                 deployment: Orchestrator) -> None:
    s = secure.subjects
    other = "other.job"
    async with connected(secure, "worker") as conn:
        js = conn.nc.jetstream()
        consumer = s.worker_consumer(other)
        # Another task type's consumer: neither made nor read.
        await conn.request_refused(f"$JS.API.CONSUMER.CREATE.{s.tasks_stream}.{consumer}."
                                   f"{s.task(other)}", b'{"stream_name":"x","config":{}}')
        await conn.request_refused(f"$JS.API.CONSUMER.MSG.NEXT.{s.tasks_stream}.{consumer}",
                                   b'{"batch":1}')
        await conn.request_refused(f"$JS.API.CONSUMER.CREATE.{s.tasks_stream}")
        # Its own consumer's create subject pins the filter: pointing it at another
        # task type's tasks is refused by the server.
        own = s.worker_consumer("demo.echo")
        body = {"stream_name": s.tasks_stream, "config": {
            "durable_name": own, "name": own, "filter_subject": s.task(other),
            "ack_policy": "explicit"}}
        reply = await conn.nc.request(
            f"$JS.API.CONSUMER.CREATE.{s.tasks_stream}.{own}.{s.task('demo.echo')}",
            json.dumps(body).encode(), timeout=5)
        assert "error" in json.loads(reply.data), reply.data
        info = await js.consumer_info(s.tasks_stream, own)
        assert info.config.filter_subject == s.task("demo.echo")
        # The same for the consumers of the other priority levels (docs/priorities.md):
        # its own it made and reads; another task type's, not; nor another level's
        # filter under its own level's name.
        for level in (1, 5):
            mine = s.worker_consumer("demo.echo", level)
            info = await js.consumer_info(s.tasks_stream, mine)
            assert info.config.filter_subject == s.task("demo.echo", level)
            theirs = s.worker_consumer(other, level)
            await conn.request_refused(
                f"$JS.API.CONSUMER.MSG.NEXT.{s.tasks_stream}.{theirs}", b'{"batch":1}')
            await conn.request_refused(
                f"$JS.API.CONSUMER.CREATE.{s.tasks_stream}.{theirs}.{s.task(other, level)}",
                b'{"stream_name":"x","config":{}}')
            await conn.request_refused(
                f"$JS.API.CONSUMER.CREATE.{s.tasks_stream}.{mine}.{s.task('demo.echo')}",
                b'{"stream_name":"x","config":{}}')
        # No events, no submits, no API beyond none at all.
        await conn.publish_refused(s.submit)
        await conn.request_refused(s.api("workflow.create"))
        await conn.subscribe_refused(s.all_events)


async def test_a_watcher_reads_events_and_nothing_else(secure: Secure) -> None:
    s = secure.subjects
    async with connected(secure, "watcher") as conn:
        await conn.publish_refused(s.submit)
        await conn.request_refused(s.api("workflow.create"))
        await conn.request_refused(s.api("workflow.stop"))
        await conn.request_refused(s.api("definition.put"))
        await conn.request_refused(s.api("workflow.signal"))
        await conn.publish_refused(s.result("w1"))
        await conn.subscribe_refused("_INBOX.>")


async def test_a_submitter_submits_and_reads_only_its_own_replies(secure: Secure) -> None:
    s = secure.subjects
    async with connected(secure, "submitter") as conn:
        for inbox in ("_INBOX.>", "_INBOX.submitter-b.>", "_INBOX.gateway.>",
                      "_INBOX.orchestrator.>", "_INBOX.*.>"):
            await conn.subscribe_refused(inbox)
        for op in ("workflow.stop", "workflow.get", "workflow.signal", "workflow.retry",
                   "definition.put", "workflow.bulk"):
            await conn.request_refused(s.api(op))
        await conn.subscribe_refused(s.all_events)
        await conn.publish_refused(s.result("w1"))


async def test_a_result_published_while_the_real_task_runs_is_refused(
        secure: Secure, deployment: Orchestrator) -> None:
    """Forgery 1: a client allowed to publish results (a worker of another task type)
    sends a fake success while the real task runs; the real output wins."""
    s = secure.subjects
    wid = "forge1-" + uuid.uuid4().hex[:6]
    async with connected(secure, "gateway") as gw, \
            connected(secure, "other-worker") as forger, \
            connected(secure, "orchestrator") as owner:
        client = NatsflowClient(gw.nc, s)
        await client.create({"name": "slow", "id": wid, "steps": [
            {"id": "a", "task": "demo.sleep", "input": {"seconds": 1.5}}]})
        await asyncio.sleep(0.3)
        fake = TaskSucceeded(workflow_id=wid, step_id="a", attempt=1, output="forged",
                             token="guessed-token")
        for msg_id in (f"{wid}:a:1:result", f"{wid}:a:1:result:guessed-token"):
            await forger.nc.jetstream().publish(s.result(wid), fake.model_dump_json().encode(),
                                                headers={"Nats-Msg-Id": msg_id})
        final = await client.wait(wid, timeout=30)
        assert final.status is not None and final.status.state == WorkflowState.COMPLETED
        assert final.status.step("a").output == {"slept": 1.5}
        letters = await read_dead_letters(owner.nc, s, count=2)
        assert {(subj, letter.reason.code) for subj, letter in letters} == {
            (s.dlq("forged-result"), "forged-result")}
    assert deployment.metrics.forged_results._value.get() >= 2


async def test_the_token_is_not_shown_in_status(secure: Secure,
                                                deployment: Orchestrator) -> None:
    s = secure.subjects
    wid = "shown-" + uuid.uuid4().hex[:6]
    async with connected(secure, "gateway") as gw, \
            connected(secure, "orchestrator") as owner:
        client = NatsflowClient(gw.nc, s)
        await client.create({"name": "t", "id": wid, "steps": [
            {"id": "a", "task": "demo.echo", "input": {}}]})
        await client.wait(wid, timeout=30)
        raw = await gw.nc.request(s.api("workflow.get"), json.dumps({"id": wid}).encode(),
                                  timeout=5)
        assert b"token" not in raw.data
        # ... while the record keeps it, as the task carried it.
        kv = await owner.nc.jetstream().key_value(s.workflows_bucket)
        stored = json.loads((await kv.get(wid)).value or b"{}")
        token = stored["status"]["steps"][0]["token"]
        assert token == deployment.engine_settings.token(wid, "a", 1)
        assert len(token) >= 22


async def test_tasks_are_seen_only_by_their_workers(secure: Secure,
                                                    deployment: Orchestrator) -> None:
    """Forgery 2 cannot happen here: nobody but the orchestrator may publish a task, and
    the token a task carries is read only by the workers of its type."""
    s = secure.subjects
    fake = TaskMessage(workflow_id="w", step_id="a", attempt=1, task="demo.echo", input={},
                       idempotency_key="w:a:1", reply_to=s.result("w"), heartbeat_interval=10)
    for user in ROLES_BUT_ORCHESTRATOR:
        async with connected(secure, user) as conn:
            await conn.publish_refused(s.task("demo.echo"), fake.model_dump_json().encode())
