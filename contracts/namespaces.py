"""Namespaces: every workflow, batch and definition belongs to one (tenancy).

A namespace is a name (a subject token) carried by a workflow's config and status, a
batch's config and status, and a stored definition; ``default`` unless given, and absent
from the JSON when it is ``default`` (so configs, fingerprints and stored keys from before
namespaces existed read as ``default``, unchanged).

A request may carry a *scope*, ``namespaces``: the namespaces its caller may see and
touch (the gateway sets it from the caller's API key). Absent means unrestricted, as for
natsflow's own trusted callers (the CLI on an operator's credentials, the index calling
the orchestrator). The orchestrator and the index enforce it: anything in a namespace
outside the scope answers exactly as if it did not exist, lists and bulk operations
filter it out, and a create in a namespace outside the scope is refused with
``namespace-forbidden``.

Namespaces are not in subject names (see docs/security.md, "Namespaces"): they separate
tenants at natsflow's API; NATS accounts separate them on the server.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Final

from pydantic import Field

from .errors import NamespaceForbidden
from .subjects import TOKEN_RE

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_SCOPE",
    "Namespace",
    "Scope",
    "check_may_create",
    "is_default",
    "narrow",
        "visible",
]

#: The namespace of everything that names none.
DEFAULT_NAMESPACE: Final = "default"
#: Most namespaces one scope may list.
MAX_SCOPE: Final = 256

#: A namespace name: one subject token, like an id.
Namespace = Annotated[str, Field(min_length=1, max_length=64, pattern=TOKEN_RE.pattern)]

#: The ``namespaces`` scope of a request. Left out of the JSON when absent, so an
#: unscoped request is byte for byte what it was before namespaces existed.
Scope = Annotated[list[Namespace] | None, Field(
    max_length=MAX_SCOPE, exclude_if=lambda v: v is None,
    description="The namespaces the caller may see and touch (set by the gateway from "
    "its API key); absent: every namespace. Anything outside answers as if it did not "
    "exist; a create outside is refused with `namespace-forbidden`.")]


def is_default(namespace: str) -> bool:
    """True for the default namespace (``exclude_if`` leaves it out of the JSON)."""
    return namespace == DEFAULT_NAMESPACE


def visible(namespace: str, scope: Collection[str] | None) -> bool:
    """Whether something in ``namespace`` is inside ``scope`` (None: everything is)."""
    return scope is None or namespace in scope


def narrow(scope: Sequence[str] | None, other: Sequence[str] | None) -> list[str] | None:
    """The scope allowed by both (None: unrestricted), in ``scope``'s order."""
    if scope is None:
        return None if other is None else list(other)
    if other is None:
        return list(scope)
    return [ns for ns in scope if ns in other]


def check_may_create(namespace: str, scope: Collection[str] | None, *,
                     field: str = "namespace") -> None:
    """Refuse a create in ``namespace`` when it is outside ``scope``.

    Raises:
        NamespaceForbidden: it is outside.
    """
    if not visible(namespace, scope):
        raise NamespaceForbidden(f"namespace {namespace!r} is outside this caller's scope",
                                 field=field)
