"""Encoding a signed instruction in place gives the message the constructors built.

`wire.envelope_to_proto` fills one `SignedInstruction` in place (its instruction's fields set
on the message itself, each signature added to the list) instead of building an instruction
and signature messages and handing them to the constructor, which copies them. For every
instruction kind, with any mix of party signatures and endorsements, the bytes on the wire must
be those of the constructors' message; a body no message can carry is refused with the same
reason and message.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import wire
from bridge._proto.bridge.v1 import types_pb2 as pb
from bridge.domain import INT64_MAX, Envelope, Instruction, Signature, validate_shape
from bridge.errors import Reason, Refused
from tests.unit.test_wire import SAMPLES


def by_constructors(envelope: Envelope) -> pb.SignedInstruction:
    """The encoding as the constructors build it (what `envelope_to_proto` did before)."""
    body = envelope.body
    kind = body.KIND
    header = pb.Instruction(
        instruction_id=body.instruction_id,
        sender=body.sender,
        valid_until=body.valid_until,
        signed_at=body.signed_at,
    )
    member = getattr(header, kind)
    member.SetInParent()
    for name in wire._CODECS[kind].names:
        value = getattr(body, name)
        if name in wire._CODECS[kind].repeated:
            getattr(member, name).extend(value)
        elif name in wire._CODECS[kind].enums:
            setattr(member, name, wire._status_to_proto(value))
        else:
            setattr(member, name, value)
    return pb.SignedInstruction(
        instruction=header, signatures=[wire.signature_to_proto(s) for s in envelope.signatures]
    )


IDS = st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True)
PARTY = st.builds(Signature, IDS, st.binary(min_size=1, max_size=72))
ENDORSEMENT = st.builds(
    Signature,
    IDS,
    st.binary(min_size=1, max_size=72),
    IDS,
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**32 - 1),
    st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.one_of(PARTY, ENDORSEMENT), max_size=5),
)
def test_in_place_encoding_equals_the_constructors(
    body: Instruction, signatures: list[Signature]
) -> None:
    """Every kind, any signatures: the same message and the same bytes as the constructors."""
    envelope = Envelope.of(body, tuple(signatures))
    encoded = wire.envelope_to_proto(envelope)
    expected = by_constructors(envelope)
    assert encoded == expected
    assert encoded.SerializeToString() == expected.SerializeToString()
    assert wire.envelope_from_proto(encoded) == envelope


@pytest.mark.parametrize(
    "body",
    [
        replace(next(s for s in SAMPLES if s.KIND == "pay"), amount=INT64_MAX + 1),
        replace(next(s for s in SAMPLES if s.KIND == "pvp_dual"), receive_amount=-(2**64)),
        replace(next(s for s in SAMPLES if s.KIND == "set_status"), status="closed"),
        replace(next(s for s in SAMPLES if s.KIND == "issue"), valid_until=2**63),
    ],
    ids=["amount-past-int64", "amount-past-int64-negative", "unknown-status", "time-past-int64"],
)
def test_a_body_no_message_carries_is_refused_as_before(body: Instruction) -> None:
    """A body the wire cannot carry gets the reason and message the constructors' way gave."""
    envelope = Envelope(body, (Signature("ICBC", b"\x01"),), b"")
    with pytest.raises(Refused) as expected:
        by_constructors_refusal(envelope)
    with pytest.raises(Refused) as caught:
        wire.envelope_to_proto(envelope)
    assert (caught.value.reason, caught.value.message) == (
        expected.value.reason,
        expected.value.message,
    )


def by_constructors_refusal(envelope: Envelope) -> None:
    """The constructors' encoding with its refusal, as `instruction_to_proto` gave it."""
    try:
        by_constructors(envelope)
    except (TypeError, ValueError) as exc:
        validate_shape(envelope.body)
        raise Refused(Reason.MALFORMED, f"{envelope.body.KIND}: cannot be encoded: {exc}") from exc
