"""What a client submits: ``WorkflowConfig`` (with its webhooks and parent), and the
checks of its step graph (ids, dependencies, cycles, branches, expressions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from contracts.errors import ExpressionError, InvalidGraph
from contracts.flow import Concurrencies, check_flow
from contracts.language.checks import check_values, refuse_expression
from contracts.language.expr import check_expression, check_template
from contracts.language.schema import check_schema, validate_instance
from contracts.models._common import (
    MAX_STEPS,
    MAX_WEBHOOK_URL,
    MAX_WEBHOOKS,
    TEMPLATE,
    TRUSTED,
    Id,
    Seconds,
    without_secrets,
)
from contracts.models._steps import (
    EXPRESSION_VARIABLES,
    ITEM_VARIABLES,
    MapStep,
    StepConfig,
    SwitchStep,
)
from contracts.namespaces import DEFAULT_NAMESPACE, Namespace, is_default
from contracts.priorities import Priority
from contracts.untrusted import check_json_value


class ParentRef(BaseModel):
    """The step of a parent workflow that runs this one as its child."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: Id
    step_id: str = Field(min_length=1, max_length=200,
                         description="The step, or `<map>[<index>]` for a map item.")
    attempt: int = Field(ge=1)


class Webhook(BaseModel):
    """Where to POST a workflow's status events (see docs/webhooks.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl = Field(description="An http or https URL; each event is POSTed to it.")
    events: Literal["terminal", "all"] = Field(
        default="terminal", description="`terminal`: only the event that ends the workflow "
        "(`workflow.completed`, `workflow.failed`, `workflow.stopped`). `all`: every event.")
    # Left out of the JSON when unset, so configs without them keep their fingerprints.
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, repr=False,
        exclude_if=lambda v: v is None,
        description="This webhook's signing key (never shown back). Default: derived from "
        "the orchestrator's webhook secret and the URL (`natsflow webhook-secret URL`).")
    unsigned: bool = Field(
        default=False, exclude_if=lambda v: not v,
        description="Send without a `Natsflow-Signature` (only when asked for).")

    @field_validator("url")
    @classmethod
    def _bounded(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(url)) > MAX_WEBHOOK_URL:
            raise ValueError(f"a webhook URL has at most {MAX_WEBHOOK_URL} characters")
        return url

    @model_validator(mode="after")
    def _signed_one_way(self) -> Webhook:
        if self.unsigned and self.secret is not None:
            raise ValueError("a webhook has a `secret` or is `unsigned`, not both")
        return self

    @model_serializer(mode="wrap")
    def _shown(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return without_secrets(handler(self), info)


class WorkflowConfig(BaseModel):
    """What a client submits: a named DAG of steps and its input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    id: Id | None = Field(default=None, description="Client-chosen id; makes submits idempotent.")
    # Left out of the JSON when default: configs from before namespaces keep their
    # fingerprints (an identical resubmit is still recognised).
    namespace: Namespace = Field(
        default=DEFAULT_NAMESPACE, exclude_if=is_default,
        description="The namespace the workflow belongs to (tenancy); a child workflow "
        "and a batch's members are in their parent's.")
    input: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepConfig] = Field(max_length=MAX_STEPS)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    output: Any = Field(
        default=None,
        description="The workflow's output, a `${expr}` template; default: the outputs of "
        "the steps nothing depends on, by step id.",
    )
    start: bool = Field(default=True, description="Start at once; false leaves it `created`.")
    on_failure: Literal["fail-fast", "continue"] = Field(
        default="fail-fast", description="`fail-fast`: a failed step cancels the rest. "
        "`continue`: independent branches finish; the workflow fails at the end.")
    timeout: Seconds | None = Field(default=None,
                                     description="Seconds for the whole workflow once started.")
    parent: ParentRef | None = Field(default=None,
                                     description="Set by natsflow on a child workflow.")
    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema (2020-12) the input must match; a create "
        "whose input does not is refused with `schema-mismatch`.")
    definition: str | None = Field(default=None,
                                   description="Set by natsflow: the stored definition run.")
    definition_version: int | None = Field(default=None,
                                           description="Set by natsflow: its version.")
    # Left out of the JSON when empty: the fingerprints of configs without webhooks (and
    # so identical resubmits of workflows stored before webhooks existed) stay the same.
    # Left out of the JSON when unset: configs without one keep their fingerprints.
    priority: Priority | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="1 (lowest) to 5 (most urgent); unset: 3, or the parent's for a "
        "child workflow. Its tasks, map items and children run at it (docs/priorities.md).")
    webhooks: list[Webhook] = Field(
        default_factory=list, max_length=MAX_WEBHOOKS, exclude_if=lambda hooks: not hooks,
        description="URLs to POST the workflow's status events to (docs/webhooks.md).")
    concurrency: Concurrencies = Field(
        default_factory=list, max_length=8, exclude_if=lambda v: not v,
        description="Limits on runs at once (docs/flow-control.md); one object or a list.")

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any, info: ValidationInfo) -> Any:
        # Before the fields are read: a NaN would become null and a deep value would
        # fail where it is serialized. Whatever the entry point (a submit too).
        ctx = info.context if isinstance(info.context, dict) else {}
        if isinstance(data, dict) and not ctx.get(TRUSTED):
            check_json_value(data)
        return data

    @field_validator("steps")
    @classmethod
    def _not_empty(cls, steps: list[StepConfig]) -> list[StepConfig]:
        if not steps:
            raise InvalidGraph("a workflow needs at least one step", field="steps")
        return steps

    @model_validator(mode="after")
    def _check_graph(self, info: ValidationInfo) -> WorkflowConfig:
        # Records read back from natsflow's own store were checked on arrival.
        ctx = info.context if isinstance(info.context, dict) else {}
        if not ctx.get(TRUSTED):
            try:
                check_graph(self)
            except ExpressionError as exc:  # found on arrival: the client's field is wrong
                refuse_expression(exc, steps=[s.id for s in self.steps])
            check_values(self)
            check_flow(self)
            if self.input_schema is not None and not ctx.get(TEMPLATE):
                validate_instance(self.input, self.input_schema, field="input")
        return self

    def step(self, step_id: str) -> StepConfig:
        """The step with this id (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def check_graph(config: WorkflowConfig) -> None:
    """Validate the step graph: ids, dependencies, cycles, branches and expressions.

    Raises:
        InvalidGraph: naming the offending step and field.
        ExpressionError: an expression does not parse (naming the field).
    """
    ids: dict[str, int] = {}
    for i, s in enumerate(config.steps):
        if s.id in ids:
            raise InvalidGraph(f"duplicate step id {s.id!r}", step=s.id, field=f"steps.{i}.id")
        ids[s.id] = i
    for i, s in enumerate(config.steps):
        for dep in s.depends_on:
            if dep not in ids:
                raise InvalidGraph(f"step {s.id!r} depends on unknown step {dep!r}",
                                   step=s.id, field=f"steps.{i}.depends_on")
            if dep == s.id:
                raise InvalidGraph(f"step {s.id!r} depends on itself",
                                   step=s.id, field=f"steps.{i}.depends_on")
    # Kahn's algorithm; whatever is left over sits on a cycle.
    indegree = {s.id: len(set(s.depends_on)) for s in config.steps}
    children: dict[str, list[str]] = {s.id: [] for s in config.steps}
    for s in config.steps:
        for dep in set(s.depends_on):
            children[dep].append(s.id)
    ready = [sid for sid, n in indegree.items() if n == 0]
    seen = 0
    while ready:
        sid = ready.pop()
        seen += 1
        for child in children[sid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if seen != len(config.steps):
        cyclic = sorted(sid for sid, n in indegree.items() if n > 0)
        raise InvalidGraph(f"steps {', '.join(cyclic)} form a cycle", step=cyclic[0],
                           field=f"steps.{ids[cyclic[0]]}.depends_on")
    compensated_by = _check_compensations(config, ids, children)
    _check_switches(config, ids)
    ancestors = ancestors_of(config)
    for i, s in enumerate(config.steps):
        # A compensation may read what the step it undoes could read, and that step.
        target = compensated_by.get(s.id)
        visible = (ancestors[target] | {target}) if target else ancestors[s.id]
        exprs: list[tuple[str, frozenset[str]]] = []
        if s.when is not None:
            exprs.append(("when", check_expression(
                s.when, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.when")))
        if isinstance(s, SwitchStep):
            exprs.append(("value", check_expression(
                s.value, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.value")))
        if isinstance(s, MapStep):
            exprs.append(("items", check_expression(
                s.items, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.items")))
            for name, template in s.step.templates().items():
                exprs.append((f"step.{name}", check_template(
                    template, variables=ITEM_VARIABLES, field=f"steps.{i}.step.{name}")))
        for name, template in s.templates().items():
            exprs.append((name, check_template(template, variables=EXPRESSION_VARIABLES,
                                               field=f"steps.{i}.{name}")))
        for name, refs in exprs:
            for ref in sorted(refs):
                if ref not in ids:
                    raise InvalidGraph(f"step {s.id!r} reads steps.{ref} in `{name}`, but "
                                       f"there is no step {ref!r}", step=s.id,
                                       field=f"steps.{i}.{name}")
                if ref not in visible:
                    raise InvalidGraph(
                        f"step {s.id!r} reads steps.{ref} in `{name}`, but {ref!r} is not "
                        "one of its dependencies", step=s.id, field=f"steps.{i}.{name}")
    if config.input_schema is not None:
        check_schema(config.input_schema, field="input_schema")
    for i, s in enumerate(config.steps):
        if s.output_schema is not None:
            check_schema(s.output_schema, field=f"steps.{i}.output_schema")
    for ref in sorted(check_template(config.output, variables=EXPRESSION_VARIABLES,
                                     field="output")):
        if ref not in ids:
            raise InvalidGraph(f"output refers to unknown step {ref!r}", field="output")


def _check_compensations(config: WorkflowConfig, ids: dict[str, int],
                         children: dict[str, list[str]]) -> dict[str, str]:
    """Compensation steps: known, named once, outside the normal flow. Returns comp -> step."""
    by: dict[str, str] = {}
    for i, s in enumerate(config.steps):
        comp = s.compensate
        if comp is None:
            continue
        where = f"steps.{i}.compensate"
        if comp not in ids:
            raise InvalidGraph(f"step {s.id!r} is compensated by unknown step {comp!r}",
                               step=s.id, field=where)
        if comp == s.id:
            raise InvalidGraph(f"step {s.id!r} cannot compensate itself", step=s.id, field=where)
        if comp in by:
            raise InvalidGraph(f"step {comp!r} already compensates {by[comp]!r}",
                               step=s.id, field=where)
        c = config.steps[ids[comp]]
        if c.depends_on or children[comp] or c.compensate:
            raise InvalidGraph(
                f"compensation step {comp!r} must stand outside the flow: no depends_on, "
                "no dependants, no compensation of its own", step=comp,
                field=f"steps.{ids[comp]}.depends_on")
        by[comp] = s.id
    return by


def _check_switches(config: WorkflowConfig, ids: dict[str, int]) -> None:
    for i, s in enumerate(config.steps):
        if not isinstance(s, SwitchStep):
            continue
        branches = [*s.cases.values(), s.default]
        for branch in branches:
            for target in branch:
                if target not in ids:
                    raise InvalidGraph(f"switch {s.id!r} names unknown step {target!r}",
                                       step=s.id, field=f"steps.{i}.cases")
                if s.id not in config.steps[ids[target]].depends_on:
                    raise InvalidGraph(
                        f"step {target!r} is a branch of switch {s.id!r} and must depend "
                        "on it", step=target, field=f"steps.{ids[target]}.depends_on")


def ancestors_of(config: WorkflowConfig) -> dict[str, frozenset[str]]:
    """Every step's transitive dependencies (the graph must be acyclic)."""
    deps = {s.id: s.depends_on for s in config.steps}
    memo: dict[str, frozenset[str]] = {}

    def visit(sid: str) -> frozenset[str]:
        if sid not in memo:
            acc: set[str] = set()
            for d in deps[sid]:
                acc.add(d)
                acc |= visit(d)
            memo[sid] = frozenset(acc)
        return memo[sid]

    for sid in deps:
        visit(sid)
    return memo
