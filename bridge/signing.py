"""Putting signatures on envelopes: a party signs its body, its central bank endorses it."""

from __future__ import annotations

from bridge.crypto import Signer
from bridge.domain import (
    Envelope,
    Instruction,
    ParticipantId,
    Signature,
    endorsement_message,
    party_message,
)


def sign_as_party(envelope: Envelope, party: ParticipantId, signer: Signer) -> Envelope:
    """Add `party`'s own signature over the canonical body."""
    return envelope.with_signature(
        Signature(party, signer.sign(party_message(envelope.body_bytes)))
    )


def endorse(
    envelope: Envelope, party: ParticipantId, central_bank: ParticipantId, signer: Signer
) -> Envelope:
    """Add `central_bank`'s endorsement of `party`'s signed leg (covers the party's signature)."""
    party_signature = envelope.party_signature(party)
    if party_signature is None:
        raise ValueError(f"{party} has not signed this envelope yet")
    message = endorsement_message(envelope.body_bytes, party_signature.value)
    return envelope.with_signature(Signature(central_bank, signer.sign(message), endorses=party))


def signed(body: Instruction, signer: Signer) -> Envelope:
    """A central bank's own instruction, signed by it."""
    return sign_as_party(Envelope.of(body), body.sender, signer)
