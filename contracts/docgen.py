"""Parts of the docs generated from the contracts, so they cannot drift from the code.

Each part sits in a doc between ``<!-- generated:<name> -->`` and
``<!-- end generated:<name> -->``; ``tests/test_docs.py`` checks that it is what this
module renders. After changing what a part is made of (e.g. a new
:class:`~contracts.models.EventType` member), rewrite the docs with::

    uv run python -m contracts.docgen
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .models import EVENT_TERMINAL, EventType
from .subjects import Subjects

__all__ = ["GENERATED", "REGENERATE", "event_types_table", "render", "stale_parts"]

#: The command that rewrites every generated part (what a failing check tells you to run).
REGENERATE: Final = "uv run python -m contracts.docgen"


def event_types_table() -> str:
    """The table of event types in docs/subjects.md: one row per :class:`EventType`."""
    subjects = Subjects()
    rows = ["| Event type | Subject | Ends the run |", "|---|---|---|"]
    for event_type in EventType:
        rows.append(f"| `{event_type.value}` | `{subjects.event('<id>', event_type.value)}` "
                    f"| {'yes' if event_type in EVENT_TERMINAL else ''} |")
    return "\n".join(rows) + "\n"


#: Every generated part: (doc path under the repository root, part name) -> renderer.
GENERATED: Final[dict[tuple[str, str], Callable[[], str]]] = {
    ("docs/subjects.md", "event-types"): event_types_table,
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
