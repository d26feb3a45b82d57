"""``/healthz`` and ``/readyz``: liveness, and readiness of what the gateway needs."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import NatsAuthFailed, Unavailable

from .._deps import Nats
from .._link import Readiness
from .._problems import problem_responses

__all__ = ["Health", "router"]

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Liveness or readiness."""

    model_config = ConfigDict(extra="forbid")

    status: str = Field(description="`ok`: the process runs.")


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """200 while the process runs, whatever the state of NATS."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness",
            responses=problem_responses(503))
async def readyz(nats: Nats) -> Readiness:
    """200 when NATS is connected and both an orchestrator and an index answer a
    ping; the body reports each of the three. Else 503: a problem naming what is
    missing, whose `details` hold the same report."""
    report = await nats.readiness()
    missing = report.missing()
    if missing:
        why = "; ".join(f"{name}: {dep.detail}" for name, dep in missing.items())
        cls = NatsAuthFailed if report.nats.code == NatsAuthFailed.code else Unavailable
        raise cls(f"not ready: {why}", details=report.model_dump(mode="json"))
    return report
