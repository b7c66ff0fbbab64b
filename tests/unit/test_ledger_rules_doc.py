"""docs/ledger-rules.md lists exactly the code's instruction kinds and refusal reasons."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.domain import INSTRUCTION_TYPES
from bridge.errors import STATUS_OF_REASON, Reason

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ledger-rules.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \| (yes|no) \| ([a-z, ]+) \| (.+) \|$", re.M)
ROWS = {
    m[1]: (m[2], m[3] == "yes", {w.strip() for w in m[4].split(",")}) for m in ROW.finditer(DOC)
}
# the ledger core and the instruction shapes: every reason they raise is a ledger reason
CORE = ("bridge/core/ledger.py", "bridge/core/policy.py", "bridge/domain.py")


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else len(DOC)]


def test_every_instruction_kind_has_its_section() -> None:
    """The documented kinds are exactly the kinds the ledger applies."""
    documented = re.findall(r"^### `([a-z_]+)`$", section("Instruction kinds"), re.M)
    assert len(documented) == len(set(documented))
    assert set(documented) == set(INSTRUCTION_TYPES)


def test_every_reason_is_documented_once_with_its_status_and_retryability() -> None:
    """The reasons table equals `bridge.errors.Reason`, its status codes and retryable flags."""
    assert len(ROW.findall(DOC)) == len(ROWS)
    assert set(ROWS) == {r.value for r in Reason}
    for reason in Reason:
        status, retryable, _ = ROWS[reason.value]
        assert status == STATUS_OF_REASON[reason], reason
        assert retryable == reason.retryable, reason


def test_reasons_the_core_raises_are_documented_as_ledger_reasons() -> None:
    """Every reason the ledger core can refuse with is marked as a ledger reason."""
    raised = set()
    for path in CORE:
        raised |= set(re.findall(r"Reason\.([A-Z_]+)", (ROOT / path).read_text(encoding="utf-8")))
    assert raised
    for reason in sorted(raised):
        assert "ledger" in ROWS[reason][2], reason


def test_every_documented_reason_appears_in_the_rules() -> None:
    """Each ledger reason in the table is also named where the rules say when it happens."""
    rules = DOC[: DOC.index("\n## Refusal reasons\n")]
    for reason, (_, _, where) in ROWS.items():
        if "ledger" in where:
            assert f"`{reason}`" in rules, reason
