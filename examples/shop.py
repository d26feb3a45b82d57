"""The shop's services for examples/order-saga.yaml: a plain NATS micro service.

Nothing here knows natsflow: the saga calls these endpoints with `request` steps.

    uv run python examples/shop.py            # NATS_URL or nats://127.0.0.1:4222

Endpoints (JSON in, JSON out; errors are micro error replies):

    shop.inventory.reserve  {order, sku, quantity} -> {reservation}
    shop.inventory.release  {reservation}          -> {released}
    shop.payments.charge    {order, amount}        -> {payment}
    shop.payments.refund    {payment}              -> {refunded}
    shop.shipping.create    {order, address}       -> {tracking}; 400 when address is empty
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Refused(Exception):
    """A business error, answered as a micro error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Shop:
    """The shop's state, in memory (what a test inspects)."""

    reserved: dict[str, dict[str, Any]] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    payments: dict[str, float] = field(default_factory=dict)
    refunded: list[str] = field(default_factory=list)
    shipped: list[str] = field(default_factory=list)

    def reserve(self, body: dict[str, Any]) -> dict[str, Any]:
        rid = f"r-{body['order']}"
        self.reserved[rid] = {"sku": body["sku"], "quantity": body["quantity"]}
        return {"reservation": rid}

    def release(self, body: dict[str, Any]) -> dict[str, Any]:
        self.released.append(body["reservation"])
        return {"released": body["reservation"]}

    def charge(self, body: dict[str, Any]) -> dict[str, Any]:
        pid = f"p-{body['order']}"
        self.payments[pid] = float(body["amount"])
        return {"payment": pid}

    def refund(self, body: dict[str, Any]) -> dict[str, Any]:
        self.refunded.append(body["payment"])
        return {"refunded": body["payment"]}

    def ship(self, body: dict[str, Any]) -> dict[str, Any]:
        if not str(body.get("address") or "").strip():
            raise Refused("400", "no shipping address")
        self.shipped.append(body["order"])
        return {"tracking": f"t-{body['order']}"}


def _endpoint(fn: Handler) -> Callable[[Request], Awaitable[None]]:
    async def handle(req: Request) -> None:
        try:
            await req.respond(json.dumps(fn(json.loads(req.data or b"{}"))).encode())
        except Refused as exc:
            await req.respond_error(exc.code, str(exc))
        except (KeyError, ValueError) as exc:
            await req.respond_error("400", f"bad request: {exc!r}")

    return handle


async def serve_shop(nc: Client, shop: Shop) -> Service:
    """Register the shop's endpoints on ``nc``."""
    service = await add_service(nc, ServiceConfig(name="shop", version="1.0.0",
                                                  description="inventory, payments, shipping"))
    routes: dict[str, Handler] = {
        "shop.inventory.reserve": shop.reserve, "shop.inventory.release": shop.release,
        "shop.payments.charge": shop.charge, "shop.payments.refund": shop.refund,
        "shop.shipping.create": shop.ship,
    }
    for subject, fn in routes.items():
        await service.add_endpoint(EndpointConfig(
            name=subject.replace(".", "-"), subject=subject, handler=_endpoint(fn)))
    return service


async def main() -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    await serve_shop(nc, Shop())
    print("shop services ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
