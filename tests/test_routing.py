"""The routing table: every effect type has a message, or says why it has none."""

from __future__ import annotations

import typing

import pytest

from contracts.subjects import Subjects
from orchestrator.records import (
    CancelEffect,
    Effect,
    JoinMapEffect,
    StartChildEffect,
)
from orchestrator.routing import Router


def _effect_types() -> list[type]:
    union = typing.get_args(Effect)[0]
    return list(typing.get_args(union))


def test_every_effect_type_is_routed_except_those_that_become_other_messages() -> None:
    table = Router(Subjects("t"))._table
    unrouted = {t for t in _effect_types() if t not in table}
    assert unrouted == {StartChildEffect, JoinMapEffect}
    assert set(table) <= set(_effect_types())


def test_an_effect_without_a_message_of_its_own_is_refused() -> None:
    join = JoinMapEffect(workflow_id="w", step_id="m", attempt=1, total=3)
    with pytest.raises(TypeError, match="join-map"):
        Router(Subjects("t")).route("w", join)


def test_a_cancel_notice_is_a_plain_message_without_an_id() -> None:
    from contracts.messages import CancelNotice
    notice = CancelNotice.model_validate({"workflow_id": "w", "step_id": "a", "attempt": 1})
    subject, _, msg_id = Router(Subjects("t")).route("w", CancelEffect(notice=notice))
    assert msg_id is None and subject == Subjects("t").cancel("w")
