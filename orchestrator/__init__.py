"""natsflow's orchestrator: the workflow engine and the service that runs it."""

from .engine import EngineSettings, decide
from .service import Orchestrator

__all__ = ["EngineSettings", "Orchestrator", "decide"]
