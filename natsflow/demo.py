"""A demo worker serving the ``demo.*`` task types used by examples and tests.

Run it with ``natsflow worker natsflow.demo:worker``.

Task types::

    demo.echo    returns its input
    demo.noop    returns {}
    demo.add     {a, b} -> {sum}
    demo.sleep   {seconds, steps?} -> sleeps, reporting progress each step -> {slept}
    demo.flaky   {fail_times} -> fails (retryable, code "flaky") while attempt <= fail_times,
                 then -> {attempt}
    demo.fail    always fails (non-retryable, code "demo-failure")
    demo.count   {items: [...]} -> {count, first, last}  (e.g. a large map's joined output)
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from natsflow.worker import TaskContext, TaskError, Worker

__all__ = ["AddIn", "AddOut", "FlakyIn", "SleepIn", "worker"]

worker = Worker()


class AddIn(BaseModel):
    """Input of ``demo.add``."""

    model_config = ConfigDict(extra="forbid")

    a: int | float
    b: int | float


class AddOut(BaseModel):
    """Output of ``demo.add``."""

    sum: int | float


class SleepIn(BaseModel):
    """Input of ``demo.sleep``."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0)
    steps: int = Field(default=1, ge=1, le=10_000)


class FlakyIn(BaseModel):
    """Input of ``demo.flaky``."""

    model_config = ConfigDict(extra="forbid")

    fail_times: int = Field(ge=0)


@worker.task("demo.echo")
async def echo(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """Return the input unchanged."""
    return data


@worker.task("demo.noop")
async def noop(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """Do nothing."""
    return {}


@worker.task("demo.add")
async def add(ctx: TaskContext, data: AddIn) -> AddOut:
    """Add two numbers."""
    return AddOut(sum=data.a + data.b)


@worker.task("demo.sleep")
async def sleep(ctx: TaskContext, data: SleepIn) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps`` equal parts, reporting progress after each."""
    part = data.seconds / data.steps
    for step in range(1, data.steps + 1):
        await asyncio.sleep(part)
        await ctx.progress({"done": step, "of": data.steps})
    return {"slept": data.seconds}


@worker.task("demo.flaky")
async def flaky(ctx: TaskContext, data: FlakyIn) -> dict[str, Any]:
    """Fail (retryably) on the first ``fail_times`` attempts, then succeed."""
    if ctx.attempt <= data.fail_times:
        raise TaskError("flaky", f"attempt {ctx.attempt} of {data.fail_times} planned failures")
    return {"attempt": ctx.attempt}


@worker.task("demo.fail")
async def fail(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    """Always fail, without retries."""
    raise TaskError("demo-failure", "demo.fail always fails", retryable=False)


class CountIn(BaseModel):
    """Input of ``demo.count``."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any]


@worker.task("demo.count")
async def count(ctx: TaskContext, data: CountIn) -> dict[str, Any]:
    """Count a list (and show its ends)."""
    items = data.items
    return {"count": len(items), "first": items[0] if items else None,
            "last": items[-1] if items else None}
