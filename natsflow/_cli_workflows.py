"""The workflow commands' work: read a config, and talk to natsflow over NATS or HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from rich.live import Live

from contracts.errors import (
    ErrorInfo,
    InvalidRequest,
    NatsflowError,
    Unavailable,
    ValidationFailed,
    error_from_info,
)
from contracts.errors import validation_failed as errors_of
from contracts.messages import WorkflowReply
from contracts.models import WORKFLOW_TERMINAL, WorkflowConfig, WorkflowStatus
from contracts.untrusted import check_json_value, load_yaml
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect

from ._cli_common import console
from ._cli_namespace import seen_from
from ._cli_render import workflow_view

__all__ = [
    "API_KEY_ENV",
    "GatewayClient",
    "load_config",
    "load_mapping",
    "nats_client",
    "parse_payload",
    "require_status",
    "validation_failed",
    "watch_gateway",
    "watch_nats",
]


#: The environment variable the CLI takes the gateway's API key from (``--gateway``).
API_KEY_ENV = "NATSFLOW_API_KEY"


def validation_failed(exc: ValidationError, what: str) -> ValidationFailed:
    """A pydantic error as natsflow's ``validation-failed``, one FieldError per field."""
    errors = errors_of(exc).errors or []
    return ValidationFailed(f"{what} is not a valid workflow config", errors=errors,
                            field=errors[0].loc if len(errors) == 1 else None)


def load_config(path: Path) -> WorkflowConfig:
    """Read a WorkflowConfig from a YAML or JSON file.

    Raises:
        InvalidRequest: the file cannot be read or parsed.
        ValidationFailed: a field is wrong.
        InvalidGraph: the step graph is wrong.
    """
    data = load_mapping(path)
    try:
        return WorkflowConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, str(path)) from None


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a mapping from a YAML or JSON file (by its suffix).

    Raises:
        InvalidRequest: the file cannot be read or parsed, or is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"{path} is not valid JSON: {' '.join(str(exc).split())}"
                                 ) from None
        check_json_value(data)
    else:
        # No aliases: a short file could otherwise expand without bound.
        data = load_yaml(text, source=str(path))
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path} must hold a mapping (a workflow config)")
    return data


def parse_payload(text: str | None) -> Any:
    """A signal's payload from the command line: JSON, ``@path`` of a JSON file, or None.

    Raises:
        InvalidRequest: the file cannot be read or the text is not JSON.
    """
    if text is None:
        return None
    where = "--payload"
    if text.startswith("@"):
        path = Path(text[1:])
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read {path}: {exc}", field="--payload") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{where} is not valid JSON: {exc}", field="--payload") from None


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
