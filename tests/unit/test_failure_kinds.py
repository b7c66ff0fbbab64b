"""The table of failure kinds in the README matches the reasons the bridge gives."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.errors import STATUS_OF_REASON, Reason

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| (refused|not decided) \| .+ \|$")


def test_readme_table_lists_every_reason_with_its_status_and_kind() -> None:
    """Each reason appears once, with the status code it is sent with and its kind."""
    rows = [m.groups() for line in README.read_text().splitlines() if (m := ROW.match(line))]
    listed = {reason: (status, kind) for reason, status, kind in rows}
    assert len(listed) == len(rows)
    expected = {
        reason.value: (STATUS_OF_REASON[reason], "not decided" if reason.retryable else "refused")
        for reason in Reason
    }
    assert listed == expected
