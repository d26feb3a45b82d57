"""Parts of the docs generated from the contracts, so they cannot drift from the code.

Each part sits in a doc between ``<!-- generated:<name> -->`` and
``<!-- end generated:<name> -->``; ``tests/test_docs.py`` checks that it is what this
module renders. After changing what a part is made of (e.g. a new
:class:`~contracts.models.EventType` member), rewrite the docs with::

    uv run python -m natsflow.docgen
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from contracts.models import EVENT_TERMINAL, EventType
from contracts.permissions import Permissions, Role, nsc_command, own_streams, permissions_for
from contracts.subjects import Subjects

__all__ = ["GENERATED", "REGENERATE", "event_types_table", "nsc_users", "render",
           "role_permissions_table", "stale_parts"]

#: The command that rewrites every generated part (what a failing check tells you to run).
REGENERATE: Final = "uv run python -m natsflow.docgen"


def event_types_table() -> str:
    """The table of event types in docs/subjects.md: one row per :class:`EventType`."""
    subjects = Subjects()
    rows = ["| Event type | Subject | Ends the run |", "|---|---|---|"]
    for event_type in EventType:
        rows.append(f"| `{event_type.value}` | `{subjects.event('<id>', event_type.value)}` "
                    f"| {'yes' if event_type in EVENT_TERMINAL else ''} |")
    return "\n".join(rows) + "\n"


#: The example worker of the permissions docs: its user name and task type.
DOC_WORKER: Final = ("mailer", "email.send")


def _doc_permissions(role: Role) -> Permissions:
    name, task = DOC_WORKER
    if role is Role.WORKER:
        return permissions_for(role, Subjects(), user=name, task_types=[task])
    return permissions_for(role, Subjects())


def _collapse(subjects: tuple[str, ...], names: dict[str, str]) -> list[str]:
    """``subjects`` with each token in ``names`` replaced by its placeholder, once each."""
    out: list[str] = []
    for subject in subjects:
        shown = ".".join(names.get(t, t) for t in subject.split("."))
        if shown not in out:
            out.append(shown)
    return out


def _cell(subjects: list[str]) -> str:
    return "<br>".join(f"`{x}`" for x in subjects) or "—"


def role_permissions_table() -> str:
    """The table of roles in docs/security.md: each role's permissions, as
    :func:`contracts.permissions.permissions_for` gives them for prefix ``natsflow``."""
    rows = ["| Role | May publish | May subscribe | Never publishes | Never subscribes | "
            "Answers requests |", "|---|---|---|---|---|---|"]
    s = Subjects()
    # The orchestrator's own streams and buckets, one pattern each in the table.
    names = {stream: "<stream>" for stream in own_streams(s)}
    names.update({stream[len("KV_"):]: "<bucket>" for stream in own_streams(s)
                  if stream.startswith("KV_")})
    for role in Role:
        p = _doc_permissions(role)
        collapse = names if role is Role.ORCHESTRATOR else {}
        rows.append(f"| `{role.value}` | {_cell(_collapse(p.publish, collapse))} | "
                    f"{_cell(_collapse(p.subscribe, collapse))} | "
                    f"{_cell(list(p.publish_deny))} | {_cell(list(p.subscribe_deny))} | "
                    f"{'yes' if p.responses else ''} |")
    streams = ", ".join(f"`{x}`" for x in own_streams(s))
    return ("\n".join(rows) + f"\n\n`<stream>` is each of the orchestrator's streams "
            f"({streams}), `<bucket>` each of its buckets; the worker is `{DOC_WORKER[0]}`, "
            f"serving `{DOC_WORKER[1]}`.\n")


def nsc_users() -> str:
    """The ``nsc add user`` commands in docs/security.md (all roles but the orchestrator,
    whose command is long: ``natsflow nats-config --nsc --user orchestrator``)."""
    commands = []
    for role in Role:
        if role is Role.ORCHESTRATOR:
            continue
        commands.append(nsc_command(_doc_permissions(role)))
    return "```sh\n" + "\n\n".join(commands) + "\n```\n"


#: Every generated part: (doc path under the repository root, part name) -> renderer.
GENERATED: Final[dict[tuple[str, str], Callable[[], str]]] = {
    ("docs/subjects.md", "event-types"): event_types_table,
    ("docs/security.md", "role-permissions"): role_permissions_table,
    ("docs/security.md", "nsc-users"): nsc_users,
}


def _part(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{re.escape(name)} -->\n)(.*?)"
                      rf"(<!-- end generated:{re.escape(name)} -->)", re.S)


def render(text: str, name: str, content: str) -> str:
    """``text`` with the generated part ``name`` replaced by ``content``.

    Raises:
        ValueError: ``text`` has no such part.
    """
    pattern = _part(name)
    if not pattern.search(text):
        raise ValueError(f"no <!-- generated:{name} --> part")
    return pattern.sub(lambda m: m.group(1) + content + m.group(3), text, count=1)


def stale_parts(root: Path) -> list[str]:
    """The generated parts under ``root`` that differ from what the code renders now."""
    stale = []
    for (doc, name), make in GENERATED.items():
        text = (root / doc).read_text()
        try:
            if render(text, name, make()) != text:
                stale.append(f"{doc} ({name})")
        except ValueError:
            stale.append(f"{doc} ({name}: its markers are missing)")
    return stale


def main(root: Path) -> None:
    """Rewrite every generated part under ``root`` (a checkout of the repository)."""
    for (doc, name), make in GENERATED.items():
        path = root / doc
        text = path.read_text()
        new = render(text, name, make())
        if new != text:
            path.write_text(new)
            print(f"rewrote {doc} ({name})")


if __name__ == "__main__":
    # The checkout this module is in, unless told otherwise.
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
