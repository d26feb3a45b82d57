"""A counting pool of run slots that fetch loops reserve in bulk."""

from __future__ import annotations

import asyncio

__all__ = ["SlotPool"]


class SlotPool:
    """Bounds how many tasks run at once across every task type of a worker.

    A fetch loop reserves up to ``most`` slots *before* fetching, so several loops can
    never fetch more messages than there are slots; it gives back what it did not use.

    Args:
        size: Total slots.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._free = size
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        """Slots not reserved right now."""
        return self._free

    async def reserve(self, most: int) -> int:
        """Wait for a free slot, then take up to ``most``; 0 once the pool is closed."""
        # Single-threaded: nothing can run between the check and the take.
        while not self._closed and self._free == 0:
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            return 0
        taken = min(most, self._free)
        self._free -= taken
        return taken

    def release(self, n: int = 1) -> None:
        """Give back ``n`` slots."""
        if n > 0:
            self._free += n
            self._changed.set()

    def close(self) -> None:
        """Wake every waiter; later reservations get 0 slots."""
        self._closed = True
        self._changed.set()
