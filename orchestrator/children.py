"""A child workflow's start: its definition looked up, its create command made."""

from __future__ import annotations

import hashlib
from typing import Protocol

from pydantic import BaseModel

from contracts.errors import NatsflowError
from contracts.messages import TaskFailed
from contracts.models import WorkflowConfig
from contracts.namespaces import DEFAULT_NAMESPACE
from transport.tracing import TraceContext

from .engine import EngineSettings
from .records import CreateWorkflow, NotifyParentEffect, StartChildEffect, WorkflowCommandEffect

__all__ = ["ChildStarter", "DefinitionResolver", "fingerprint"]


def fingerprint(model: BaseModel) -> str:
    """A digest of a config, to tell an identical resubmit from a conflicting one."""
    return hashlib.sha256(model.model_dump_json(exclude={"id"}).encode()).hexdigest()[:32]


class DefinitionResolver(Protocol):
    """Where child workflows' definitions come from (the definitions registry)."""

    async def resolve_config(self, name: str, version: int | None, *,
                             namespace: str = DEFAULT_NAMESPACE) -> WorkflowConfig:
        """The config of that definition version (latest if None) in ``namespace``.

        Raises:
            NatsflowError: no such definition or version (a code saying so).
        """
        ...


class ChildStarter:
    """Turns a start-child effect into the effect that is sent instead.

    Args:
        settings: Engine knobs (the result tokens of a failure told to the parent).
        definitions: The registry; None: every child fails to start.
    """

    def __init__(self, settings: EngineSettings,
                 definitions: DefinitionResolver | None = None) -> None:
        self.settings = settings
        self.definitions = definitions

    async def __call__(self, effect: StartChildEffect, trace: TraceContext | None
                       ) -> WorkflowCommandEffect | NotifyParentEffect:
        """The create command of the child, or its failure reported to the parent."""
        try:
            if self.definitions is None:
                raise NatsflowError("this orchestrator has no definitions registry")
            # Looked up in the parent's namespace only: a child cannot reach another's.
            config = await self.definitions.resolve_config(effect.definition, effect.version,
                                                           namespace=effect.namespace)
        except NatsflowError as exc:
            p = effect.parent
            return NotifyParentEffect(result=TaskFailed(
                workflow_id=p.workflow_id, step_id=p.step_id, attempt=p.attempt,
                token=self.settings.token(p.workflow_id, p.step_id, p.attempt),
                error=exc.info().model_copy(update={"retryable": False, "step": p.step_id})))
        # A parent with a priority passes it on; without one, the child keeps its own.
        inherited = {} if effect.priority is None else {"priority": effect.priority}
        child = config.model_copy(update={
            "id": effect.child_id, "namespace": effect.namespace, "input": effect.input,
            "parent": effect.parent, "start": True, **inherited})
        return WorkflowCommandEffect(workflow_id=effect.child_id, command=CreateWorkflow(
            config=child, fingerprint=fingerprint(child), trace=trace))
