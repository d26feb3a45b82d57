"""The full-size rate-limit proof: 1,000 steps limited to 50/s across two orchestrators.

``tests/test_limits_nats.py::test_a_rate_limit_spaces_steps_across_two_orchestrators``
makes the same assertions with 60 steps at 20/s (CI time); this runs the issue's size.
It starts its own nats-server (temporary store), two orchestrators and a worker in this
process, submits N one-step workflows whose step has ``rate_limit: {limit: R, per: 1s}``,
and checks that they took at least (N-1)/R seconds and that no one-second window holds
more than R dispatches (``step.dispatched`` event times). Prints one JSON line.

    uv run python bench/limits_rate.py                    # 1,000 at 50/s (about 25 s)
    uv run python bench/limits_rate.py --steps 200 --rate 20
    uv run python bench/limits_rate.py --keyed 200        # overhead of a keyed limit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from typing import Any

from contracts.models import Event, EventType, WorkflowState
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from natsflow.worker import TaskContext, Worker
from orchestrator import Orchestrator
from transport.connect import NatsSettings, connect


async def _run(settings: NatsSettings, workflows: list[dict[str, Any]]
               ) -> tuple[float, list[float]]:
    worker = Worker(concurrency=256, name="bench-limits")

    @worker.task("bench.call")
    async def call(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    nc = await connect(settings, name="bench")
    client = NatsflowClient(nc, settings.subjects)
    dispatched: dict[tuple[str, int], float] = {}
    done = asyncio.Event()
    left = {str(w["id"]) for w in workflows}

    async def on_event(msg: Any) -> None:
        ev = Event.model_validate_json(msg.data)
        if ev.type == EventType.STEP_DISPATCHED:
            # A core subscriber also sees a republished event JetStream dropped as a
            # duplicate: counted once, by its place in its workflow.
            dispatched[(ev.workflow_id, ev.seq)] = ev.time.timestamp()
        elif ev.type in (EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED):
            left.discard(ev.workflow_id)
            if not left:
                done.set()

    await nc.subscribe(settings.subjects.events_of("*"), cb=on_event)
    async with Orchestrator(settings), Orchestrator(settings), worker.running(settings):
        t0 = time.monotonic()
        sem = asyncio.Semaphore(64)

        async def create(w: dict[str, Any]) -> None:
            async with sem:
                await client.create(w)

        await asyncio.gather(*(create(w) for w in workflows))
        await asyncio.wait_for(done.wait(), timeout=600)
        took = time.monotonic() - t0
        for w in workflows[:5]:
            st = (await client.get(str(w["id"]))).status
            assert st is not None and st.state == WorkflowState.COMPLETED
    await nc.close()
    return took, sorted(dispatched.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=50)
    ap.add_argument("--keyed", type=int, default=0,
                    help="instead: N workflows with a keyed limit (N keys), and N without; "
                    "prints the seconds of each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as store, EmbeddedNats(store) as server:
        def settings() -> NatsSettings:
            return NatsSettings(servers=[server.url], prefix=f"b{uuid.uuid4().hex[:8]}")

        if args.keyed:
            plain = [{"name": "p", "id": f"p{i}", "steps": [{"id": "s", "task": "bench.call"}]}
                     for i in range(args.keyed)]
            keyed = [{**p, "id": f"k{i}", "input": {"k": i},
                      "concurrency": {"key": "${input.k}", "limit": 1}}
                     for i, p in enumerate(plain)]
            t_plain, _ = asyncio.run(_run(settings(), plain))
            t_keyed, _ = asyncio.run(_run(settings(), keyed))
            print(json.dumps({"workflows": args.keyed, "plain_s": round(t_plain, 2),
                              "keyed_s": round(t_keyed, 2),
                              "overhead_ms_per_workflow":
                                  round((t_keyed - t_plain) / args.keyed * 1000, 3)}))
            return 0
        workflows = [{"name": "rated", "id": f"r{i}", "steps": [{
            "id": "call", "task": "bench.call",
            "rate_limit": {"limit": args.rate, "per": "1s"}}]} for i in range(args.steps)]
        took, times = asyncio.run(_run(settings(), workflows))
    window = max(sum(1 for u in times if s <= u < s + 1.0) for s in times)
    ok = took >= (args.steps - 1) / args.rate and window <= args.rate
    print(json.dumps({"steps": args.steps, "rate": args.rate, "seconds": round(took, 2),
                      "most_in_one_second": window, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
