"""The engine handles every kind of input through its dispatch table."""

from __future__ import annotations

from typing import get_args

from orchestrator.engine import _APPLY
from orchestrator.records import CreateWorkflow, WorkflowInput


def test_every_input_kind_has_one_handler() -> None:
    # ``decide`` looks the input's type up in ``_APPLY`` (the create is handled before, as
    # the one input that needs no record): a new input kind without a handler fails here,
    # not on its first message.
    union, *_ = get_args(WorkflowInput)
    kinds = set(get_args(union))
    assert CreateWorkflow in kinds and len(kinds) > 5
    assert set(_APPLY) == kinds - {CreateWorkflow}
