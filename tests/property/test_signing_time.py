"""Signing times, for any value: the body carries them through every encoding, the body's own
deadlines bound them, and the ledger's window decides exactly as its rule says."""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from bridge import wire
from bridge.core.ledger import check_signed_at
from bridge.domain import (
    CLOCK_SKEW_MS,
    INT64_MAX,
    MAX_SIGNED_AGE_MS,
    Envelope,
    Pay,
    ProposePvp,
    instruction_from_fields,
)
from bridge.errors import Reason, Refused

times = st.integers(1, INT64_MAX)


def pay(valid_until: int, signed_at: int) -> Pay:
    return Pay("p1", "ICBC", valid_until, "BOCQ", "CNY", 100, "INV-1", signed_at=signed_at)


def refusal(action: Callable[[], object]) -> Reason | None:
    """The reason `action` is refused with, or None when it is not."""
    try:
        action()
    except Refused as refused:
        return refused.reason
    return None


@given(a=times, b=times)
def test_a_signing_time_up_to_the_deadline_survives_json_and_protobuf(a: int, b: int) -> None:
    """Any signing time no later than valid_until comes back unchanged from the canonical
    body and from the wire, with identical body bytes."""
    signed_at, valid_until = min(a, b), max(a, b)
    body = pay(valid_until, signed_at)
    parsed = instruction_from_fields(json.loads(body.canonical_bytes()))
    assert parsed == body
    decoded = wire.envelope_from_proto(wire.envelope_to_proto(Envelope.of(body)))
    assert decoded.body.signed_at == signed_at
    assert decoded.body_bytes == body.canonical_bytes()


@given(a=times, b=times)
def test_a_body_signed_after_its_own_deadlines_is_invalid_time(a: int, b: int) -> None:
    """signed_at > valid_until, or a proposal's signed_at > settle_by, is INVALID_TIME from
    the canonical fields and from the wire alike; at or before them it is accepted."""
    signed_at, deadline = max(a, b), min(a, b)
    late = signed_at > deadline
    expected = Reason.INVALID_TIME if late else None
    fields = pay(deadline, signed_at).to_fields()
    assert refusal(lambda: instruction_from_fields(fields)) is expected
    proposal = ProposePvp(
        "x1", "ICBC", INT64_MAX, "BOCHK", "CNY", 100, "HKD", 108, "1.08", deadline,
        signed_at=signed_at,
    )  # fmt: skip
    assert refusal(lambda: instruction_from_fields(proposal.to_fields())) is expected
    message = wire.envelope_to_proto(Envelope(proposal, (), proposal.canonical_bytes()))
    assert refusal(lambda: wire.envelope_from_proto(message)) is expected


@given(
    now=st.integers(MAX_SIGNED_AGE_MS + 1, 2**62),
    offset=st.integers(-MAX_SIGNED_AGE_MS - 10_000, CLOCK_SKEW_MS + 10_000),
)
def test_the_ledger_window_is_skew_ahead_and_age_behind_inclusive(now: int, offset: int) -> None:
    """At ledger time `now`, a body signed at now + offset is refused exactly when the offset
    is beyond CLOCK_SKEW_MS ahead or MAX_SIGNED_AGE_MS behind."""
    body = pay(INT64_MAX, now + offset)
    outside = offset > CLOCK_SKEW_MS or offset < -MAX_SIGNED_AGE_MS
    expected = Reason.INVALID_TIME if outside else None
    assert refusal(lambda: check_signed_at(body, now)) is expected
