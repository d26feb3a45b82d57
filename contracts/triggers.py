"""Triggers: a NATS subject bound to a workflow, so any message on it starts one.

A trigger names a subject (NATS wildcards allowed) and where its messages come from:
core NATS (natsflow's own ``<PREFIX>_TRIGGERS`` stream captures the subject) or an
existing JetStream ``stream`` (natsflow adds a durable consumer filtered on the
subject). Each message is read through CEL (:mod:`contracts.language.expr`) with one variable,
``msg``::

    msg.subject   the subject it was published on
    msg.data      its payload: parsed when it is JSON, else its text
    msg.headers   its headers (name -> first value)

``when`` (a condition) decides whether it starts anything; ``input`` (a template) makes
the workflow's input, ``id`` (a template, e.g. ``"order-${msg.data.id}"``) its id, so a
message delivered or published twice starts one workflow (a create with an existing id
and the same config changes nothing). The workflow is a stored ``definition`` (latest, or
a pinned ``version``) or an inline ``config``.

Everything here is pure: the orchestrator (``orchestrator/triggers.py``) consumes, and
this module says what a message means (:func:`map_message`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.definitions import DefinitionName
from contracts.errors import ExpressionError, ValidationFailed
from contracts.language.expr import check_expression, check_template, evaluate, render
from contracts.namespaces import DEFAULT_NAMESPACE, Namespace, Scope, is_default
from contracts.subjects import SERVER_SUBJECT_MARK, TOKEN_RE, Subjects, reserved_subject_rule

__all__ = [
    "MSG_VARIABLE",
    "TRIGGER_LABEL",
    "CreateTriggerRequest",
    "ListTriggersRequest",
    "PauseTriggerRequest",
    "Trigger",
    "TriggerInfo",
    "TriggerList",
    "TriggerName",
    "TriggerReply",
    "TriggerRequest",
    "TriggerSpec",
    "TriggerStats",
    "check_trigger_subject",
    "cover",
    "map_message",
    "message_context",
    "subject_covers",
    "subjects_collide",
    "trigger_key",
]

_Frozen = ConfigDict(extra="forbid", frozen=True)
#: The one variable of a trigger's expressions.
MSG_VARIABLE: Final = "msg"
#: The label every workflow a trigger starts carries: the trigger's name.
TRIGGER_LABEL: Final = "trigger"
#: Trigger names are tokens (they are part of KV keys and consumer names).
TriggerName = Annotated[str, Field(min_length=1, max_length=64, pattern=TOKEN_RE.pattern)]
_STREAM_NAME = r"^[A-Za-z0-9_-]+$"
_MAX_SUBJECT = 256


# -- subjects ------------------------------------------------------------------------
def _check_syntax(subject: str) -> list[str]:
    if not subject or len(subject) > _MAX_SUBJECT:
        raise ValueError(f"a subject of 1 to {_MAX_SUBJECT} characters")
    if subject.startswith(SERVER_SUBJECT_MARK):
        raise ValueError(f"subject {subject!r} is one of the server's own ($...)")
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"subject {subject!r} has an empty token or white space")
        if token == ">" and i != len(tokens) - 1:
            raise ValueError(f"subject {subject!r}: '>' is only allowed as the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ValueError(f"subject {subject!r}: '*' and '>' are whole tokens")
    if tokens[0] in ("*", ">"):
        raise ValueError(f"subject {subject!r}: the first token must be literal (a "
                         "wildcard there would take the server's and natsflow's subjects)")
    return tokens


def subjects_collide(a: str, b: str) -> bool:
    """True if some subject matches both filters ``a`` and ``b``."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True


def subject_covers(a: str, b: str) -> bool:
    """True if every subject matching ``b`` matches ``a``."""
    ta, tb = a.split("."), b.split(".")
    for i, x in enumerate(ta):
        if x == ">":
            return len(tb) > i
        if i >= len(tb):
            return False
        y = tb[i]
        if y == ">" or (x != "*" and (y == "*" or x != y)):
            return False
    return len(ta) == len(tb)


def cover(filters: list[str]) -> list[str]:
    """The fewest filters that match what ``filters`` match, sorted: what one stream can
    capture (a stream refuses two subjects that overlap). Filters that only partly
    overlap are both kept (the stream then refuses them)."""
    unique = sorted(set(filters))
    return [f for f in unique
            if not any(g != f and subject_covers(g, f) for g in unique)]


def check_trigger_subject(subject: str, subjects: Subjects) -> None:
    """Refuse a subject a trigger may not listen on.

    Raises:
        ValidationFailed: bad syntax, the server's (``$...``) or natsflow's own subjects
            (``<prefix>.>``), named ``subject``.
    """
    try:
        _check_syntax(subject)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="subject") from None
    rule = reserved_subject_rule(subjects, subject)
    if rule is None and subjects_collide(subject, f"{subjects.prefix}.>"):
        rule = "natsflow-subject"
    if rule is not None:
        what = ("the server's own" if rule == "server-subject"
                else f"natsflow's own ({subjects.prefix}.>)")
        raise ValidationFailed(f"subject {subject!r} is one of {what} subjects: a trigger "
                               "may not listen there", field="subject",
                               details={"rule": rule})


# -- models --------------------------------------------------------------------------
class TriggerSpec(BaseModel):
    """A trigger as written: which messages, which workflow, and how one becomes the
    other. Exactly one of ``definition`` and ``config``."""

    model_config = _Frozen

    name: TriggerName
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default,
                                 description="Where the definition is looked up and the "
                                 "workflows run.")
    subject: str = Field(description="The subject filter, NATS wildcards allowed "
                         "(`orders.*`, `orders.>`); its first token is literal.")
    stream: str | None = Field(default=None, max_length=100, pattern=_STREAM_NAME,
                               description="An existing JetStream stream to read "
                               "(filtered on `subject`); absent: core NATS, captured by "
                               "natsflow's own stream.")
    deliver: Literal["new", "all"] = Field(
        default="new", description="With `stream`: start from messages stored after the "
        "trigger is made (`new`) or from the stream's first (`all`).")
    definition: DefinitionName | None = Field(default=None,
                                              description="A stored definition to run.")
    version: int | None = Field(default=None, ge=1,
                                description="Its version; absent: the latest at each start.")
    config: dict[str, Any] | None = Field(
        default=None, description="An inline WorkflowConfig (without `id` and `input`).")
    when: str | None = Field(default=None, max_length=4096,
                             description="CEL over `msg`: start only when true.")
    input: Any = Field(default="${msg.data}",
                       description="Template over `msg`: the workflow's input (an object).")
    id: str = Field(min_length=1, max_length=1024,
                    description="Template over `msg`: the workflow's id, e.g. "
                    "`order-${msg.data.id}`. A message seen twice makes the same id, and "
                    "starts nothing the second time.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=32,
                                   description="Labels of each workflow (templates).")

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        _check_syntax(v)
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str | None) -> str | None:
        if v is not None and v.startswith(SERVER_SUBJECT_MARK):
            raise ValueError("not a stream name")
        return v

    @model_validator(mode="after")
    def _checked(self) -> TriggerSpec:
        if (self.definition is None) == (self.config is None):
            raise ValidationFailed("give exactly one of `definition` and `config`",
                                   field="definition" if self.config is None else "config")
        if self.version is not None and self.definition is None:
            raise ValidationFailed("`version` goes with `definition`", field="version")
        if self.config is not None:
            for own in ("id", "input"):
                if own in self.config:
                    raise ValidationFailed(f"the trigger makes the workflow's {own!r}: "
                                           f"give it as the trigger's `{own}`",
                                           field=f"config.{own}")
        variables = (MSG_VARIABLE,)
        if self.when is not None:
            check_expression(self.when, variables=variables, field="when")
        for name in ("input", "id", "labels"):
            try:
                check_template(getattr(self, name), variables=variables, field=name)
            except ExpressionError as exc:
                if exc.field is None:  # an unclosed ``${`` is found before the field is
                    exc.field = name
                raise
        return self


class CreateTriggerRequest(TriggerSpec):
    """``trigger.create``: a new trigger (the same one again changes nothing)."""

    paused: bool = Field(default=False, description="Made paused: consumes nothing "
                         "until resumed (a core subject is captured meanwhile).")
    namespaces: Scope = None

    def spec(self) -> TriggerSpec:
        """The trigger as written, without the request's own fields."""
        return TriggerSpec.model_validate(self.model_dump(exclude={"paused", "namespaces"}))


class TriggerRequest(BaseModel):
    """``trigger.get|resume|delete|stats``: one trigger by name."""

    model_config = _Frozen

    name: TriggerName
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default)
    namespaces: Scope = None


class PauseTriggerRequest(TriggerRequest):
    """``trigger.pause``: consume nothing until resumed, with a note why."""

    note: str | None = Field(default=None, max_length=1024)


class ListTriggersRequest(BaseModel):
    """``trigger.list``: every trigger the caller may see (or one namespace's)."""

    model_config = _Frozen

    namespace: str | None = Field(default=None, exclude_if=lambda v: v is None,
                                  description="Only this namespace's.")
    namespaces: Scope = None


class Trigger(BaseModel):
    """A stored trigger: what was written, and whether it is paused."""

    model_config = _Frozen

    spec: TriggerSpec
    paused: bool = False
    note: str | None = None
    created_at: datetime
    updated_at: datetime


class TriggerStats(BaseModel):
    """A trigger's counters since it was made, summed over every orchestrator.

    For watching, not for accounting: each replica writes its counts once a second, so
    a killed one loses its last second's, and a message redelivered counts again.
    """

    model_config = _Frozen

    received: int = Field(default=0, description="Messages taken.")
    matched: int = Field(default=0, description="Messages whose `when` held (or none).")
    skipped: int = Field(default=0, description="Messages whose `when` was false.")
    started: int = Field(default=0, description="Workflows created.")
    duplicates: int = Field(default=0, description="Creates that found the workflow "
                            "there already (a message seen twice).")
    failed: int = Field(default=0, description="Messages the mapping could not handle "
                        "(dead-lettered).")

    def plus(self, other: TriggerStats) -> TriggerStats:
        """Both counts added."""
        return TriggerStats(**{k: getattr(self, k) + getattr(other, k)
                               for k in TriggerStats.model_fields})


class TriggerInfo(BaseModel):
    """A trigger with its counters."""

    model_config = _Frozen

    trigger: Trigger
    stats: TriggerStats


class TriggerReply(BaseModel):
    """``trigger.create|pause|resume|delete``: the trigger as it now is; ``created`` false
    when it was there already, unchanged."""

    model_config = _Frozen

    trigger: Trigger
    created: bool = False


class TriggerList(BaseModel):
    """Every trigger, by namespace and name."""

    model_config = _Frozen

    triggers: list[TriggerInfo]


def trigger_key(namespace: str, name: str) -> str:
    """The KV key of a trigger (and of its counters)."""
    return f"{namespace}.{name}"


# -- a message -----------------------------------------------------------------------
def message_context(subject: str, data: bytes, headers: Mapping[str, str] | None
                    ) -> dict[str, Any]:
    """The ``msg`` variable of a message."""
    text = data.decode("utf-8", errors="replace")
    try:
        value: Any = json.loads(text) if text.strip() else text
    except ValueError:
        value = text
    return {MSG_VARIABLE: {"subject": subject, "data": value,
                           "headers": dict(headers or {})}}


def map_message(spec: TriggerSpec, *, subject: str, data: bytes,
                headers: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The ``workflow.create`` request a message makes, or None when ``when`` is false.

    Raises:
        ExpressionError: an expression fails on this message (its field named).
        ValidationFailed: ``input`` is no object, or the id no id.
    """
    ctx = message_context(subject, data, headers)
    if spec.when is not None:
        held = evaluate(spec.when, ctx, field="when")
        if not isinstance(held, bool):
            raise ExpressionError(f"`when` gave {type(held).__name__}, not a bool",
                                  expression=spec.when, field="when")
        if not held:
            return None
    input_ = render(spec.input, ctx, field="input")
    if not isinstance(input_, dict):
        raise ValidationFailed(f"the input is {type(input_).__name__}, not an object",
                               field="input")
    wid = render(spec.id, ctx, field="id")
    if not isinstance(wid, str | int) or not TOKEN_RE.match(str(wid)) or len(str(wid)) > 128:
        raise ValidationFailed(f"the id {wid!r} is not an id: 1 to 128 letters, digits, "
                               "'_' and '-'", field="id")
    labels = {k: str(v) for k, v in render(spec.labels, ctx, field="labels").items()}
    labels[TRIGGER_LABEL] = spec.name
    if spec.config is not None:
        config = {**spec.config, "id": str(wid), "input": input_,
                  "labels": {**spec.config.get("labels", {}), **labels},
                  "namespace": spec.namespace}
        return {"config": config}
    body: dict[str, Any] = {"definition": spec.definition, "input": input_, "id": str(wid),
                            "labels": labels}
    if spec.version is not None:
        body["version"] = spec.version
    if not is_default(spec.namespace):
        body["namespace"] = spec.namespace
    return body
