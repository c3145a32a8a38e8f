"""Text that came from a node reaches an operator's terminal with its control characters
written out, never acted on (a tenant's VM may not move the cursor or recolour the screen)."""

from __future__ import annotations

import pytest

from cloudd.client.inspectdoc import EventView
from cloudd.client.render import event_cells, shown, table


@pytest.mark.parametrize(("text", "printed"), [
    ("idle", "idle"),
    ("\x1b[2J\x1b[Hrm -rf", "\\x1b[2J\\x1b[Hrm -rf"),
    ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
    ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
    ("naïve ✓", "naïve ✓"),
])
def test_control_characters_are_written_out(text: str, printed: str) -> None:
    assert shown(text) == printed


def test_a_table_cell_and_an_event_reason_print_no_escape() -> None:
    [line] = table([[("c1", ""), ("down\x1b]0;owned\x07", "")]], color=False, width=None)
    assert "\x1b" not in line and "\x07" not in line
    assert line == "  c1  down\\x1b]0;owned\\x07"
    event = EventView(id=1, time=0.0, cloud="hpc", kind="action", subject="c1", term=3,
                      reason="\x1b[31mred")
    assert [text for text, _ in event_cells(event)][-1] == "\\x1b[31mred"
