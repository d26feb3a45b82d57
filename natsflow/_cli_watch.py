"""``--watch``: a workflow's steps live in the terminal until it ends."""

from __future__ import annotations

from contextlib import aclosing
from datetime import UTC, datetime

from rich.live import Live

from contracts.models import WORKFLOW_TERMINAL, WorkflowStatus
from natsflow.client import NatsflowClient

from ._cli_client import require_status
from ._cli_common import console
from ._cli_render import workflow_view

__all__ = ["watch_live"]


async def watch_live(client: NatsflowClient, workflow_id: str, *,
                     namespaces: list[str] | None = None) -> WorkflowStatus:
    """Show the workflow's steps live until it is terminal; return the final status.

    Redrawn on each of its events (over NATS, or the gateway's SSE with ``--gateway``).
    """
    status = require_status(await client.get(workflow_id, namespaces=namespaces))
    with Live(workflow_view(status), console=console, refresh_per_second=8) as live:
        if status.state not in WORKFLOW_TERMINAL:
            async with aclosing(client.watch(workflow_id)) as events:
                async for _event in events:
                    status = require_status(await client.get(workflow_id))
                    live.update(workflow_view(status, now=datetime.now(UTC)))
        status = require_status(await client.get(workflow_id))
        live.update(workflow_view(status))
    _end_live()
    return status


def _end_live() -> None:
    # Off a terminal, Live leaves its last frame without a final newline.
    if not console.is_terminal:
        console.print()
