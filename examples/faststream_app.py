"""A FastStream service that also runs two natsflow workflow steps.

The warehouse keeps its stock up to date from a plain FastStream subscriber
(``warehouse.restock``) and serves the steps of examples/warehouse.yaml, ``warehouse.reserve``
and ``warehouse.pack``, through a ``natsflow.faststream.TaskRouter`` on the same broker:

    faststream run examples.faststream_app:app        # NATS_URL, NATSFLOW_PREFIX
    natsflow submit examples/warehouse.yaml --watch   # with an orchestrator running
    faststream docs gen examples.faststream_app:app   # the AsyncAPI document, tasks too
"""

from __future__ import annotations

from dataclasses import dataclass, field

from faststream import FastStream
from faststream.nats import NatsBroker
from pydantic import BaseModel

from natsflow.faststream import TaskRouter
from natsflow.worker import TaskContext, TaskError
from transport.connect import NatsSettings


class Restock(BaseModel):
    """Goods arrived."""

    sku: str
    quantity: int


class ReserveIn(BaseModel):
    """Input of ``warehouse.reserve``."""

    order: str
    sku: str
    quantity: int


class ReserveOut(BaseModel):
    """Output of ``warehouse.reserve``."""

    reservation: str
    left: int


class PackIn(BaseModel):
    """Input of ``warehouse.pack``."""

    reservation: str


class PackOut(BaseModel):
    """Output of ``warehouse.pack``."""

    parcel: str


@dataclass
class Warehouse:
    """The service's state: stock per SKU, and what each attempt reserved."""

    stock: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, ReserveOut] = field(default_factory=dict)
    packed: list[str] = field(default_factory=list)


def make_app(settings: NatsSettings, warehouse: Warehouse | None = None) -> FastStream:
    """The FastStream app: its own subscriber and the natsflow steps, on one broker."""
    house = warehouse if warehouse is not None else Warehouse()
    broker = NatsBroker(settings.servers, graceful_timeout=10.0)
    tasks = TaskRouter(prefix=settings.prefix)

    @broker.subscriber("warehouse.restock")
    async def restock(event: Restock) -> None:
        """Add arrived goods to the stock."""
        house.stock[event.sku] = house.stock.get(event.sku, 0) + event.quantity

    @tasks.task("warehouse.reserve")
    async def reserve(ctx: TaskContext, data: ReserveIn) -> ReserveOut:
        """Reserve stock for an order; fails with `out-of-stock`, not retried."""
        # A redelivered attempt must not reserve twice: the key is the same on each.
        if (done := house.reserved.get(ctx.idempotency_key)) is not None:
            return done
        have = house.stock.get(data.sku, 0)
        if have < data.quantity:
            raise TaskError("out-of-stock", f"{have} of {data.sku} in stock", retryable=False,
                            details={"sku": data.sku, "in_stock": have})
        house.stock[data.sku] = have - data.quantity
        done = house.reserved[ctx.idempotency_key] = ReserveOut(
            reservation=f"r-{data.order}", left=have - data.quantity)
        await ctx.progress({"reserved": data.quantity})
        return done

    @tasks.task("warehouse.pack")
    async def pack(ctx: TaskContext, data: PackIn) -> PackOut:
        """Pack a reservation into a parcel."""
        house.packed.append(data.reservation)
        return PackOut(parcel=f"p-{data.reservation}")

    broker.include_router(tasks)
    # Before the broker starts: the streams and consumers the task subscribers bind to.
    return FastStream(broker, on_startup=[tasks.declare])


app = make_app(NatsSettings.from_env())
