"""The definitions registry, on a JetStream KV bucket (one immutable key per version).

Keys are ``<name>.<version>`` in the default namespace (as they were before namespaces
existed, so definitions stored then are the default namespace's, with no migration) and
``<namespace>.<name>.<version>`` in any other: names and namespaces are single tokens,
so the number of tokens tells the two apart. A new version is allocated with KV ``create`` (which
fails if the key exists), so two orchestrators storing at once get distinct versions,
numbered 1, 2, 3... with no gaps. Versions never change, so they are cached in memory.

"Latest" is looked up each time, and costs one key read once a name is known here: the
highest version seen so far is remembered, and the next number is read to see whether
another orchestrator has stored one since. Only the first lookup of a name lists its
keys (the name's own, never the whole bucket). In a cluster that read may be answered
by a replica a moment behind, as every direct KV read may: a version stored through
another server is then run from a moment later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.definitions import (
    Definition,
    DefinitionInfo,
    DefinitionSummary,
    DefinitionVersion,
)
from contracts.errors import (
    DefinitionNotFound,
    InvalidGraph,
    ValidationFailed,
    validation_failed,
)
from contracts.models import TEMPLATE, TRUSTED, WorkflowConfig
from contracts.namespaces import DEFAULT_NAMESPACE
from contracts.subjects import TOKEN_RE

from .kvscan import scan

__all__ = ["DefinitionStore", "definition_fingerprint"]

_VERSION_RACE_ATTEMPTS = 20


def definition_fingerprint(config: WorkflowConfig) -> str:
    """A digest of a definition's config (its name and namespace excluded)."""
    data = config.model_dump_json(exclude={"id", "name", "namespace", "definition",
                                           "definition_version"})
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def _stem(namespace: str, name: str) -> str:
    """The key of a definition without its version."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}.{name}"


def _key(namespace: str, name: str, version: int) -> str:
    return f"{_stem(namespace, name)}.{version}"


def _parse_key(key: str) -> tuple[str, str, int] | None:
    """(namespace, name, version) of a stored key, None for a key of no definition."""
    parts = key.split(".")
    if len(parts) == 2:
        parts.insert(0, DEFAULT_NAMESPACE)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


class DefinitionStore:
    """Stored definitions; also the runtime's resolver for child workflows."""

    def __init__(self, kv: KeyValue,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kv = kv
        self.clock = clock
        self._versions: dict[tuple[str, str, int], Definition] = {}
        # Per (namespace, name), the highest version seen here (later ones may exist
        # elsewhere).
        self._latest: dict[tuple[str, str], int] = {}

    @staticmethod
    def validate(name: str, config: dict[str, Any], *,
                 namespace: str = DEFAULT_NAMESPACE) -> WorkflowConfig:
        """A definition's config, checked like any workflow's, in ``namespace``.

        Raises:
            ValidationFailed: a field is wrong (named ``config.<field>``).
            InvalidGraph: the graph is wrong (step and field named).
        """
        for reserved in ("id", "parent", "definition", "definition_version"):
            if config.get(reserved) is not None:
                raise ValidationFailed(f"a definition has no {reserved!r}; it is set per run",
                                       field=f"config.{reserved}")
        if config.get("name", name) != name:
            raise ValidationFailed(f"the config's name {config['name']!r} is not {name!r}",
                                   field="config.name")
        if config.get("namespace", namespace) != namespace:
            raise ValidationFailed(f"the config's namespace {config['namespace']!r} is not "
                                   f"the definition's, {namespace!r}", field="config.namespace")
        try:
            return WorkflowConfig.model_validate({**config, "name": name,
                                                  "namespace": namespace},
                                                 context={TEMPLATE: True})
        except InvalidGraph as exc:
            exc.field = f"config.{exc.field}" if exc.field else "config"
            raise
        except ValidationError as exc:
            raise validation_failed(exc, loc_prefix=("config",)) from None

    async def put(self, name: str, config: dict[str, Any], *,
                  namespace: str = DEFAULT_NAMESPACE) -> tuple[Definition, bool]:
        """Store ``config`` as the next version of ``name`` in ``namespace``;
        (definition, created).

        An identical config to the latest version stores nothing and returns it.
        """
        checked = self.validate(name, config, namespace=namespace)
        digest = definition_fingerprint(checked)
        for _ in range(_VERSION_RACE_ATTEMPTS):
            last = await self._latest_version(namespace, name)
            if last:
                latest = await self.get(name, last, namespace=namespace)
                if latest.fingerprint == digest:
                    return latest, False
            version = last + 1
            # Checked above as a template: its input comes with each run.
            stored = Definition.model_validate(
                {"name": name, "namespace": namespace, "version": version, "config": checked,
                 "fingerprint": digest, "created_at": self.clock()}, context={TRUSTED: True})
            try:
                await self.kv.create(_key(namespace, name, version),
                                     stored.model_dump_json(exclude_none=True).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another writer took this version number: look again
            self._versions[(namespace, name, version)] = stored
            self._latest[(namespace, name)] = max(version,
                                                  self._latest.get((namespace, name), 0))
            return stored, True
        raise RuntimeError(f"could not allocate a version of {name!r}")

    async def get(self, name: str, version: int | None = None, *,
                  namespace: str = DEFAULT_NAMESPACE) -> Definition:
        """One version (the latest if None) of ``namespace``'s definition ``name``.

        Raises:
            DefinitionNotFound: no such name or version (in that namespace).
        """
        # A key could not even name it.
        if not (TOKEN_RE.fullmatch(name) and TOKEN_RE.fullmatch(namespace)):
            raise DefinitionNotFound(f"no definition {name!r}", field="definition")
        if version is None:
            version = await self._latest_version(namespace, name)
            if not version:
                raise DefinitionNotFound(f"no definition {name!r}", field="definition")
        hit = self._versions.get((namespace, name, version))
        if hit is not None:
            return hit
        try:
            entry = await self.kv.get(_key(namespace, name, version))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise DefinitionNotFound(f"no version {version} of definition {name!r}",
                                     field="version") from None
        found = Definition.model_validate_json(entry.value or b"", context={TRUSTED: True})
        self._versions[(namespace, name, version)] = found
        return found

    async def info(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> DefinitionInfo:
        """The latest version and the list of all versions."""
        if not (TOKEN_RE.fullmatch(name) and TOKEN_RE.fullmatch(namespace)):
            raise DefinitionNotFound(f"no definition {name!r}", field="name")
        versions = await self._versions_of(namespace, name)
        if not versions:
            raise DefinitionNotFound(f"no definition {name!r}", field="name")
        defs = [await self.get(name, v, namespace=namespace) for v in versions]
        return DefinitionInfo(name=name, namespace=namespace, latest=defs[-1], versions=[
            DefinitionVersion(version=d.version, created_at=d.created_at,
                              fingerprint=d.fingerprint) for d in defs])

    async def summaries(self, *, namespaces: Collection[str] | None = None
                        ) -> list[DefinitionSummary]:
        """Every definition with its latest version, by namespace and name.

        Args:
            namespaces: Only these namespaces' (None: every one).
        """
        latest: dict[tuple[str, str], int] = {}
        for namespace, name, version in await self._keys():
            if namespaces is None or namespace in namespaces:
                latest[(namespace, name)] = max(version, latest.get((namespace, name), 0))
        out = []
        for namespace, name in sorted(latest):
            d = await self.get(name, latest[(namespace, name)], namespace=namespace)
            out.append(DefinitionSummary(name=name, namespace=namespace,
                                         latest_version=d.version, updated_at=d.created_at))
        return out

    async def resolve_config(self, name: str, version: int | None, *,
                             namespace: str = DEFAULT_NAMESPACE) -> WorkflowConfig:
        """The config to run for ``name`` (``version`` or the latest) in ``namespace``,
        marked with both (and in that namespace)."""
        d = await self.get(name, version, namespace=namespace)
        return d.config.model_copy(update={"definition": d.name, "namespace": namespace,
                                           "definition_version": d.version})

    async def _keys(self, pattern: str = ">") -> list[tuple[str, str, int]]:
        """(namespace, name, version) of every key matching ``pattern``."""
        out = []
        for entry in await scan(self.kv, pattern, keys_only=True):
            parsed = _parse_key(entry.key)
            if parsed is not None:
                out.append(parsed)
        return out

    async def _versions_of(self, namespace: str, name: str) -> list[int]:
        """Every stored version of ``name`` (a token), in order, from its own keys."""
        # ``*`` is one token: the pattern takes this namespace's keys of the name only.
        return sorted(v for _, _, v in await self._keys(f"{_stem(namespace, name)}.*"))

    async def _latest_version(self, namespace: str, name: str) -> int:
        """The latest version of ``name`` (a token), 0 if it has none."""
        known = self._latest.get((namespace, name))
        if known is None:  # first lookup here: list the name's own keys
            versions = await self._versions_of(namespace, name)
            if not versions:
                return 0
            known = versions[-1]
        # Versions are numbered without gaps and never removed: any stored since the
        # last lookup (by another orchestrator too) follow the highest one known.
        while await self._exists(namespace, name, known + 1):
            known += 1
        self._latest[(namespace, name)] = known
        return known

    async def _exists(self, namespace: str, name: str, version: int) -> bool:
        try:
            await self.get(name, version, namespace=namespace)
        except DefinitionNotFound:
            return False
        return True
