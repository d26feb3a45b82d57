"""natsflow task handlers in a FastStream app."""

from ._router import TaskRouter

__all__ = ["TaskRouter"]
