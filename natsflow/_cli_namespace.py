"""``--namespace/-n``: the namespace a CLI command creates in, or looks inside."""

from __future__ import annotations

from typing import Annotated

import typer

from contracts.errors import ValidationFailed
from contracts.models import WorkflowConfig
from contracts.namespaces import DEFAULT_NAMESPACE
from contracts.subjects import TOKEN_RE

__all__ = ["NamespaceOpt", "in_namespace", "scope"]

NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", envvar="NATSFLOW_NAMESPACE", show_envvar=True,
    help="Create in this namespace, and see only it (default: create in `default`, see "
         "every namespace).")]


def scope(namespace: str | None) -> list[str] | None:
    """The request scope ``--namespace`` asks for (None: every namespace)."""
    return None if namespace is None else [namespace]


def in_namespace(config: WorkflowConfig, namespace: str | None) -> WorkflowConfig:
    """``config`` in ``namespace``, when the file names none (or the same one).

    Raises:
        ValidationFailed: the file names another namespace.
    """
    if namespace is None or config.namespace == namespace:
        return config
    if config.namespace != DEFAULT_NAMESPACE:
        raise ValidationFailed(f"the config's namespace is {config.namespace!r}, not "
                               f"--namespace {namespace!r}", field="namespace")
    if not TOKEN_RE.match(namespace) or len(namespace) > 64:
        raise ValidationFailed(f"--namespace {namespace!r} is not a namespace name (letters, "
                               "digits, '_' and '-', at most 64)", field="namespace")
    return config.model_copy(update={"namespace": namespace})
