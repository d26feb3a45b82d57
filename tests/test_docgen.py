"""The generated parts of the docs are what the code renders now (natsflow.docgen)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.models import EVENT_TERMINAL, EventType
from natsflow.docgen import GENERATED, REGENERATE, event_types_table, render, stale_parts

ROOT = Path(__file__).resolve().parent.parent


def test_generated_doc_parts_are_current() -> None:
    stale = stale_parts(ROOT)
    assert not stale, f"stale generated docs: {', '.join(stale)}; run `{REGENERATE}`"


def test_the_event_types_table_has_a_row_per_event_type() -> None:
    rows = [line for line in event_types_table().splitlines()[2:]]
    assert [row.split("`")[1] for row in rows] == [t.value for t in EventType]
    assert {row.split("`")[1] for row in rows if row.endswith("| yes |")} == {
        t.value for t in EVENT_TERMINAL}
    doc = (ROOT / "docs" / "subjects.md").read_text()
    assert all(row in doc for row in rows)


def test_render_replaces_only_its_part_and_needs_the_markers() -> None:
    text = "a\n<!-- generated:x -->\nold\n<!-- end generated:x -->\nb\n"
    assert render(text, "x", "new\n") == (
        "a\n<!-- generated:x -->\nnew\n<!-- end generated:x -->\nb\n")
    with pytest.raises(ValueError, match="generated:y"):
        render(text, "y", "new\n")
    assert ("docs/subjects.md", "event-types") in GENERATED
