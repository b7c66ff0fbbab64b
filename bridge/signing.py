"""Putting signatures on envelopes: a party signs its body, its central bank endorses it.

A central bank endorses legs in batches: `endorse_legs` builds the Merkle tree of the legs'
leaves (`bridge.domain.endorsement_leaf`), signs its root once and gives each leg an
endorsement carrying that signature with the leg's index, the batch size and its audit path.
`endorse` is a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.crypto import Signer
from bridge.domain import (
    Envelope,
    Instruction,
    ParticipantId,
    Signature,
    endorsement_leaf,
    endorsement_root_message,
    party_message,
)
from bridge.log.merkle import inclusion_paths, root_of_hashes

__all__ = ["endorse", "endorse_legs", "sign_as_party", "signed"]


def sign_as_party(envelope: Envelope, party: ParticipantId, signer: Signer) -> Envelope:
    """Add `party`'s own signature over the canonical body."""
    return envelope.with_signature(
        Signature(party, signer.sign(party_message(envelope.body_bytes)))
    )


def endorse_legs(
    legs: Sequence[tuple[Envelope, ParticipantId]], central_bank: ParticipantId, signer: Signer
) -> list[Signature]:
    """`central_bank`'s endorsements of every (envelope, party) leg, in order, with one
    signature over the batch's Merkle root (both legs of a dual PvP may be in one batch).
    Raises ValueError if a party has not signed its envelope."""
    if not legs:
        return []
    leaves = []
    for envelope, party in legs:
        party_signature = envelope.party_signature(party)
        if party_signature is None:
            raise ValueError(f"{party} has not signed this envelope yet")
        leaves.append(endorsement_leaf(envelope.body_bytes, party_signature.value))
    size = len(leaves)
    value = signer.sign(endorsement_root_message(root_of_hashes(leaves), size))
    paths = inclusion_paths(leaves)
    return [
        Signature(central_bank, value, party, i, size, tuple(paths[i]))
        for i, (_, party) in enumerate(legs)
    ]


def endorse(
    envelope: Envelope, party: ParticipantId, central_bank: ParticipantId, signer: Signer
) -> Envelope:
    """Add `central_bank`'s endorsement of `party`'s signed leg, alone (a batch of one)."""
    return envelope.with_signature(endorse_legs([(envelope, party)], central_bank, signer)[0])


def signed(body: Instruction, signer: Signer) -> Envelope:
    """A central bank's own instruction, signed by it."""
    return sign_as_party(Envelope.of(body), body.sender, signer)
