"""``--watch``: a workflow's steps live in the terminal until it ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from rich.live import Live

from contracts.models import WORKFLOW_TERMINAL, WorkflowStatus
from natsflow.client import NatsflowClient

from ._cli_client import GatewayClient, require_status
from ._cli_common import console
from ._cli_namespace import seen_from
from ._cli_render import workflow_view

__all__ = ["watch_gateway", "watch_nats"]


async def watch_nats(client: NatsflowClient, workflow_id: str, *,
                     namespaces: list[str] | None = None) -> WorkflowStatus:
    """Show the workflow's steps live until it is terminal; return the final status."""
    status = require_status(await client.get(workflow_id, namespaces=namespaces))
    with Live(workflow_view(status), console=console, refresh_per_second=8) as live:
        if status.state not in WORKFLOW_TERMINAL:
            async for _event in client.events(workflow_id, follow=True):
                status = require_status(await client.get(workflow_id))
                live.update(workflow_view(status, now=datetime.now(UTC)))
        status = require_status(await client.get(workflow_id))
        live.update(workflow_view(status))
    _end_live()
    return status


async def watch_gateway(client: GatewayClient, workflow_id: str, *,
                        interval: float = 0.5, namespace: str | None = None) -> WorkflowStatus:
    """Like :func:`watch_nats`, polling the gateway."""
    status = seen_from(require_status(await client.get(workflow_id)), namespace)
    with Live(workflow_view(status), console=console, refresh_per_second=8) as live:
        while status.state not in WORKFLOW_TERMINAL:
            await asyncio.sleep(interval)
            status = require_status(await client.get(workflow_id))
            live.update(workflow_view(status, now=datetime.now(UTC)))
    _end_live()
    return status


def _end_live() -> None:
    # Off a terminal, Live leaves its last frame without a final newline.
    if not console.is_terminal:
        console.print()
