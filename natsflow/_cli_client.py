"""How the CLI reaches natsflow: one :class:`NatsflowClient` over NATS.

Every command talks through :func:`nats_client`. ``--gateway`` (``submit``, ``status``,
``signal``, ``watch``) is the one exception, for a deployment whose NATS is not
reachable from where the CLI runs but whose gateway is (with an API key):
:class:`GatewayClient` makes the same three calls (create, get, signal) over the
gateway's HTTP API and answers as the NATS client does, a :class:`WorkflowReply`, or
the natsflow error the problem document carries, so the commands print and exit
alike either way.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from contracts.errors import (
    ErrorInfo,
    InvalidRequest,
    NatsflowError,
    Unavailable,
    error_from_info,
)
from contracts.messages import WorkflowReply
from contracts.models import WorkflowConfig, WorkflowStatus
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect

__all__ = ["API_KEY_ENV", "GatewayClient", "nats_client", "require_status"]


#: The environment variable the CLI takes the gateway's API key from (``--gateway``).
API_KEY_ENV = "NATSFLOW_API_KEY"


@asynccontextmanager
async def nats_client(settings: NatsSettings) -> AsyncIterator[NatsflowClient]:
    """A natsflow client on a fresh NATS connection, closed afterwards."""
    nc = await connect(settings, name="natsflow-cli")
    try:
        yield NatsflowClient(nc, settings.subjects)
    finally:
        await nc.close()


def require_status(reply: WorkflowReply) -> WorkflowStatus:
    """The status in a reply; a reply without one means the engine is behind."""
    if reply.status is None:
        raise Unavailable(f"workflow {reply.id} was accepted but has no status yet; retry")
    return reply.status


class GatewayClient:
    """The workflow endpoints of a natsflow gateway, over HTTP.

    Args:
        base_url: The gateway's URL, e.g. ``http://127.0.0.1:8000``.
        api_key: The API key to send (``Authorization: Bearer``); by default the
            ``NATSFLOW_API_KEY`` environment variable, if set.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, timeout=15.0,
            headers={"Authorization": f"Bearer {key}"} if key else None)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _send(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        try:
            resp = await self.http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.is_success:
            return resp.status_code, data
        raise _problem_error(resp.status_code, data)

    async def create(self, config: WorkflowConfig) -> WorkflowReply:
        """POST /workflows."""
        code, data = await self._send("POST", "/workflows",
                                      config.model_dump(mode="json", exclude_none=True))
        # 202: created now; 200: this id was used before for the same config.
        return _as_reply(data).model_copy(update={"created": code != 200})

    async def get(self, workflow_id: str) -> WorkflowReply:
        """GET /workflows/{id}."""
        _, data = await self._send("GET", f"/workflows/{workflow_id}")
        return _as_reply(data)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> WorkflowReply:
        """POST /workflows/{id}/signals/{name}, the payload as the JSON body."""
        path = f"/workflows/{quote(workflow_id, safe='')}/signals/{quote(name, safe='')}"
        _, data = await self._send("POST", path, payload)
        return _as_reply(data)


def _as_reply(data: Any) -> WorkflowReply:
    # The gateway answers with a WorkflowStatus, or {"id"} when it has none yet.
    if isinstance(data, dict) and "steps" in data:
        status = WorkflowStatus.model_validate(data)
        return WorkflowReply(id=status.id, status=status)
    return WorkflowReply.model_validate(data)


def _problem_error(http_status: int, data: Any) -> NatsflowError:
    """An RFC 9457 problem document as the natsflow error it carries."""
    if isinstance(data, dict):
        fields = {k: v for k, v in data.items() if k in ErrorInfo.model_fields}
        fields.setdefault("message", data.get("detail") or data.get("title") or "error")
        if "code" in fields:
            try:
                return error_from_info(ErrorInfo.model_validate(fields))
            except ValidationError:
                pass
    message = f"gateway answered HTTP {http_status}"
    if http_status >= 500:
        return Unavailable(message)
    return InvalidRequest(message)
