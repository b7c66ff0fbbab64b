"""The shape check's quick test of each field agrees with the full checks that name a refusal.

`validate_shape` gives every checked field a quick test and runs the field's full checks
(`_check_field`) only when the quick test fails. Instructions of every kind with one field
replaced by a value inside, at or past its bounds (or of another type) must get the same
refusal, reason and message, as the full checks of every field give, so the quick test never
lets through what the full checks refuse.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import (
    INT64_MAX,
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    DualPvp,
    ExpirePvp,
    FreezeAccount,
    Instruction,
    Issue,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    _check_field,
    _shape_plan,
    _validate_specific,
    validate_shape,
)
from bridge.errors import Refused

T0 = 1_763_889_940_000
UNTIL = T0 + 60_000
KEY = bytes([4]) + bytes(range(64))
SAMPLES: list[Instruction] = [
    AdmitBank("adm-1", "PBOC", UNTIL, "ICBC", KEY, signed_at=T0),
    SetParticipantStatus("st-1", "PBOC", UNTIL, "ICBC", "suspended", signed_at=T0),
    SetPolicy("pol-1", "PBOC", UNTIL, 1_000_000, 5_000_000, ("HK",), signed_at=T0),
    FreezeAccount("frz-1", "PBOC", UNTIL, "ICBC", "CNY", True, signed_at=T0),
    Issue("iss-1", "PBOC", UNTIL, "ICBC", "CNY", 10**12, signed_at=T0),
    Redeem("red-1", "ICBC", UNTIL, "CNY", 500, signed_at=T0),
    Pay("pay-1", "ICBC", UNTIL, "CCB", "CNY", 12_345, "B/L 1", signed_at=T0),
    ProposePvp(
        "pvp-1", "ICBC", UNTIL, "BOCHK", "CNY", 1_000, "HKD", 1_085, "1.085", UNTIL, "INV-1",
        signed_at=T0,
    ),
    AcceptPvp("acc-1", "BOCHK", UNTIL, "ICBC", "pvp-1", "ab" * 32, signed_at=T0),
    RejectPvp("rej-1", "BOCHK", UNTIL, "ICBC", "pvp-1", signed_at=T0),
    CancelPvp("can-1", "ICBC", UNTIL, "pvp-1", signed_at=T0),
    ExpirePvp("expire-1", "bridge", UNTIL, "ICBC", "pvp-1", signed_at=T0),
    DualPvp("dual-1", "KBANK", UNTIL, "ENBD", "THB", 100, "AED", 11, "0.11", "", signed_at=T0),
]  # fmt: skip


class Flag(int):
    """An int subclass: valid for an integer field, though not of type int."""


class Text(str):
    """A str subclass: valid for a text field, though not of type str."""


EDGES = [0, 1, -1, INT64_MAX, INT64_MAX + 1, True, False, "", "0", "0.0", "1", "A", "CNY", "x" * 64]
VALUES = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-5, 5),
    st.integers(INT64_MAX - 3, INT64_MAX + 3),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.integers(0, 10**6).map(Flag),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,70}", fullmatch=True),
    st.from_regex(r"[A-Z]{2,4}", fullmatch=True),
    st.from_regex(r"[0-9]{0,20}(\.[0-9]{0,20})?", fullmatch=True),
    st.text(max_size=300),
    st.text(alphabet="ab \n\t\x00é0.", max_size=10),
    st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True).map(Text),
)


def reason_of(check: Any) -> tuple[str, str] | None:
    try:
        check()
    except Refused as refused:
        return refused.reason.value, refused.message
    return None


def full_checks(instruction: Instruction) -> None:
    """Every checked field through its full checks, in declaration order, then the rules
    between fields: what `validate_shape` must decide."""
    for name, _ in _shape_plan(type(instruction)).fields:
        _check_field(instruction.KIND, name, getattr(instruction, name))
    _validate_specific(instruction)


CASES = [(sample, name) for sample in SAMPLES for name, _ in _shape_plan(type(sample)).fields]


@settings(max_examples=80, deadline=None)
@given(value=VALUES)
@pytest.mark.parametrize(("sample", "name"), CASES, ids=[f"{s.KIND}.{name}" for s, name in CASES])
def test_the_quick_test_and_the_full_checks_agree(
    sample: Instruction, name: str, value: Any
) -> None:
    """Any checked field of any kind replaced by any value: the same refusal (or none)."""
    changed = replace(sample, **{name: value})
    assert reason_of(lambda: validate_shape(changed)) == reason_of(lambda: full_checks(changed))


def test_every_sample_is_valid() -> None:
    """The samples themselves pass both ways (so a refusal comes from the changed field)."""
    for sample in SAMPLES:
        validate_shape(sample)
        full_checks(sample)
