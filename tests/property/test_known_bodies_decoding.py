"""Decoding an entry with known bodies gives exactly what decoding it without them gives.

A node keeps the envelopes it decoded at its edge (`KnownBodies`); replaying an entry whose
body bytes are one of them takes that body instead of decoding it again, decodes the rest and
compares the whole re-encoding with the entry's bytes. Whatever the bytes (real entries changed
at random, a known body under other signatures, bodies decoded from protobuf with random field
values), the answer with known bodies must be the very entry, or the very refusal (reason and
message), that the full decoding gives without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import wire
from bridge.domain import Entry, Envelope, Instruction, KnownBodies, Outcome, Signature
from bridge.errors import Refused
from tests.property.test_entry_decoding import ENTRIES, T0, changed
from tests.property.test_shape_fast_path import SAMPLES


def at_edge(envelope: Envelope) -> Envelope:
    """The envelope as a node decodes it from protobuf at its edge."""
    return wire.envelope_from_proto(wire.envelope_to_proto(envelope))


def known_of(*envelopes: Envelope) -> KnownBodies:
    known = KnownBodies()
    for envelope in envelopes:
        known.remember(envelope)
    return known


ORIGINALS = [Entry.from_canonical_bytes(data) for data in ENTRIES]


def decoding(data: bytes, known: KnownBodies | None = None) -> tuple[str, Any]:
    """What decoding gives: ("entry", the entry, its bytes, body bytes, shape checked) or
    ("refused", reason and message)."""
    try:
        entry = Entry.from_canonical_bytes(data, known)
    except Refused as refused:
        return "refused", (refused.reason.value, refused.message)
    envelope = entry.envelope
    return "entry", (entry, entry.canonical_bytes(), envelope.body_bytes, envelope.shape_checked)


@settings(max_examples=1500, deadline=None)
@given(changed())
def test_a_changed_entry_decodes_with_known_bodies_as_without(data: bytes) -> None:
    """Any change to a real entry whose body is known: the same entry or the same refusal."""
    known = known_of(*(at_edge(e.envelope) for e in ORIGINALS))
    assert decoding(data, known) == decoding(data)


PARTY = st.builds(
    Signature, st.sampled_from(["KBANK", "ENBD", "ICBC", 'a"b', "é"]), st.binary(max_size=72)
)
ENDORSEMENT = st.builds(
    Signature,
    st.sampled_from(["BOT", "CBUAE", "PBOC"]),
    st.binary(max_size=72),
    st.sampled_from(["KBANK", "ENBD", "x\\y"]),
    st.integers(0, 2**33),
    st.integers(0, 2**33),
    st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple),
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(ORIGINALS),
    st.lists(st.one_of(PARTY, ENDORSEMENT), max_size=5).map(tuple),
    st.integers(0, 2**40),
    st.sampled_from(list(Outcome)),
)
def test_a_known_body_under_other_signatures_decodes_as_without(
    original: Entry, signatures: tuple[Signature, ...], seq: int, outcome: Outcome
) -> None:
    """A known body logged with signatures, seq and outcome of its own: the entry's, not the
    known envelope's, exactly as the full decoding reads them."""
    envelope = original.envelope
    logged = Entry(seq, T0, Envelope(envelope.body, signatures, envelope.body_bytes), outcome)
    data = logged.canonical_bytes()
    known = known_of(at_edge(envelope))
    assert decoding(data, known) == decoding(data)
    assert Entry.from_canonical_bytes(data, known_of(at_edge(envelope))).envelope.signatures == (
        signatures
    )


FIELD_VALUES = st.one_of(
    st.integers(-3, 3),
    st.integers(2**62, 2**64),
    st.sampled_from(["", "CNY", "HK", "é", 'a"b', "0.11", "ab" * 32, "x" * 200, "suspended"]),
    st.booleans(),
    st.tuples(st.sampled_from(["HK", "TH", "hk"])),
    st.binary(max_size=66),
)


@st.composite
def changed_bodies(draw: st.DrawFn) -> Instruction:
    """A sample body, as it is or with one field set to a random value."""
    sample: Instruction = draw(st.sampled_from(SAMPLES))
    if draw(st.booleans()):
        names = [f.name for f in dataclasses.fields(sample)]
        return dataclasses.replace(sample, **{draw(st.sampled_from(names)): draw(FIELD_VALUES)})
    return sample


def edge_decoded(body: Instruction) -> Envelope | None:
    """The body signed, as a node's edge decodes it from protobuf (None: it does not encode,
    or the edge refuses it)."""
    try:
        return at_edge(Envelope.of(body, (Signature(body.sender, b"\x01" * 64),)))
    except (Refused, TypeError, ValueError, OverflowError, AttributeError):
        return None


@settings(max_examples=1500, deadline=None)
@given(changed_bodies())
def test_a_body_the_edge_accepts_decodes_from_the_log_as_the_edge_decoded_it(
    body: Instruction,
) -> None:
    """Whatever body the edge accepts, its entry decodes with it known exactly as without it:
    a known body never lets through what the full decoding would refuse or read otherwise."""
    envelope = edge_decoded(body)
    if envelope is None:
        return
    data = Entry(3, T0, envelope, Outcome.SETTLED).canonical_bytes()
    known = known_of(envelope)
    with_known = decoding(data, known)
    assert with_known == decoding(data)
    assert known.hits == 1


def test_every_sample_body_passes_the_edge_and_is_taken_from_the_known() -> None:
    """Each kind's sample, decoded at the edge, is taken from the known bodies on replay: the
    quick way is the one the property above exercises for every kind."""
    for sample in SAMPLES:
        envelope = edge_decoded(sample)
        assert envelope is not None, sample
        known = known_of(envelope)
        data = Entry(3, T0, envelope, Outcome.SETTLED).canonical_bytes()
        assert decoding(data, known) == decoding(data)
        assert (known.hits, len(known)) == (1, 0)
