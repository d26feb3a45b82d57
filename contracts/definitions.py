"""Stored workflow definitions: named, versioned, immutable (the definitions registry).

``PUT /definitions/{name}`` (or ``definition.put`` over NATS) stores a new version of a
WorkflowConfig without ``id``; a workflow is then started by name (the latest version, or
a pinned one) with just its input, and records the version it runs.

Definitions belong to a namespace (``default`` unless given): the same name in two
namespaces is two definitions, and a workflow started from one (a child workflow too)
runs in its namespace.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .models import WorkflowConfig
from .namespaces import DEFAULT_NAMESPACE, Namespace, Scope, is_default
from .priorities import Priority
from .subjects import TOKEN_RE

__all__ = [
    "Definition",
    "DefinitionInfo",
    "DefinitionList",
    "DefinitionReply",
    "DefinitionSummary",
    "DefinitionVersion",
    "GetDefinitionRequest",
    "ListDefinitionsRequest",
    "PutDefinitionRequest",
    "RunDefinition",
]

_Frozen = ConfigDict(extra="forbid", frozen=True)
#: Definition names are tokens (they are part of KV keys).
DefinitionName = Annotated[str, Field(min_length=1, max_length=100, pattern=TOKEN_RE.pattern)]


class Definition(BaseModel):
    """One stored version of a definition."""

    model_config = _Frozen

    name: str
    # Left out when default: definitions stored before namespaces read the same.
    namespace: str = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default)
    version: int = Field(ge=1)
    config: WorkflowConfig
    fingerprint: str = Field(description="Digest of the config: equal configs, equal digests.")
    created_at: datetime


class DefinitionVersion(BaseModel):
    """One version, without its config."""

    model_config = _Frozen

    version: int
    created_at: datetime
    fingerprint: str


class DefinitionInfo(BaseModel):
    """A definition: its latest version in full, and every version."""

    model_config = _Frozen

    name: str
    namespace: str = DEFAULT_NAMESPACE
    latest: Definition
    versions: list[DefinitionVersion]


class DefinitionSummary(BaseModel):
    """A line of the definitions list."""

    model_config = _Frozen

    name: str
    namespace: str = DEFAULT_NAMESPACE
    latest_version: int
    updated_at: datetime


class DefinitionList(BaseModel):
    """Every stored definition, by namespace and name."""

    model_config = _Frozen

    definitions: list[DefinitionSummary]


class PutDefinitionRequest(BaseModel):
    """``definition.put``: store ``config`` (a WorkflowConfig without id) as ``name``."""

    model_config = _Frozen

    name: DefinitionName
    config: dict[str, Any]
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default,
                                 description="The definition's namespace.")
    namespaces: Scope = None


class GetDefinitionRequest(BaseModel):
    """``definition.get``: one definition (``version`` None = every version + latest)."""

    model_config = _Frozen

    name: DefinitionName
    version: int | None = Field(default=None, ge=1)
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default,
                                 description="The definition's namespace.")
    namespaces: Scope = None


class ListDefinitionsRequest(BaseModel):
    """``definition.list``: every definition the caller may see (or one namespace's)."""

    model_config = _Frozen

    namespace: str | None = Field(default=None, exclude_if=lambda v: v is None,
                                  description="Only this namespace's.")
    namespaces: Scope = None


class RunDefinition(BaseModel):
    """``POST /workflows`` body that starts a stored definition with just its input."""

    model_config = _Frozen

    definition: DefinitionName
    version: int | None = Field(default=None, ge=1, description="Default: the latest.")
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=128,
                           pattern=TOKEN_RE.pattern)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    start: bool = True
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, description="The namespace "
                                 "the definition is looked up in and the workflow runs in.")
    priority: Priority | None = Field(default=None, exclude_if=lambda v: v is None,
                                      description="1 to 5; default: the definition's own.")


class DefinitionReply(BaseModel):
    """Answer of ``definition.put``: the stored version; ``created`` false if unchanged."""

    model_config = _Frozen

    definition: Definition
    created: bool
