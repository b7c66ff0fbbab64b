"""Decoding an entry from its canonical bytes accepts exactly the canonical, well-shaped ones.

The decoder takes shortcuts (the body's bytes are encoded from the parsed JSON when that
provably equals encoding the instruction; the shape is checked once). Whatever bytes it is
given, changed at random from real entries (any byte, hex case, whitespace, a repeated key),
what it accepts must re-encode to exactly those bytes through the domain's own encoding, carry
the body bytes the instruction encodes to, and pass the shape checks; what it refuses, it
refuses with the errors the log's readers handle.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import (
    AdmitBank,
    DualPvp,
    Entry,
    Envelope,
    Outcome,
    Pay,
    SetPolicy,
    Signature,
    canonical_json,
    validate_shape,
)
from bridge.errors import Reason, Refused

T0 = 1_763_889_940_000
UNTIL = T0 + 60_000
KEY = bytes([4]) + bytes(range(64))
# what `log verify` and the wire decoder treat as an unreadable entry
UNREADABLE = (Refused, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _entry(body: Any, signatures: tuple[Signature, ...]) -> bytes:
    return Entry(7, T0, Envelope.of(body, signatures), Outcome.SETTLED).canonical_bytes()


PATH = (bytes(range(32)), bytes(range(32, 64)), b"\xab" * 32)
ENTRIES = [
    _entry(
        DualPvp(
            "d-1", "KBANK", UNTIL, "ENBD", "THB", 100, "AED", 11, "0.11", "INV é", signed_at=T0
        ),
        (
            Signature("KBANK", b"\xaa" * 64),
            Signature("ENBD", b"\x02" * 64),
            Signature("BOT", b"\x03" * 64, "KBANK", 2, 5, PATH),
            Signature("CBUAE", b"\x04" * 64, "ENBD", 0, 1, ()),
        ),
    ),
    _entry(
        AdmitBank("adm-1", "PBOC", UNTIL, "ICBC", KEY, signed_at=T0),
        (Signature("PBOC", b"\x05" * 64),),
    ),
    _entry(SetPolicy("pol-1", "PBOC", UNTIL, 10, 20, ("HK", "TH"), signed_at=T0), ()),
    _entry(Pay("p-1", "ICBC", UNTIL, "CCB", "CNY", 5, 'say "hi"\\', signed_at=T0), ()),
]  # fmt: skip


@st.composite
def changed(draw: st.DrawFn) -> bytes:
    """A real entry with one change: a byte replaced, a run of letters switched case, a
    space inserted, or a key repeated."""
    data = bytearray(draw(st.sampled_from(ENTRIES)))
    at = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["byte", "case", "space", "repeat"]))
    if how == "byte":
        data[at] = draw(st.sampled_from(b'0123456789abcdefABCDEF"{}[],:. \\-tfnu'))
    elif how == "case":
        end = at + draw(st.integers(1, 70))
        data[at:end] = bytes(data[at:end]).swapcase()
    elif how == "space":
        data.insert(at, ord(" "))
    else:  # a key written twice: JSON keeps the last one
        data[1:1] = b'"outcome":"SETTLED",'
    return bytes(data)


def check_decoding(data: bytes) -> None:
    try:
        entry = Entry.from_canonical_bytes(data)
    except UNREADABLE:
        return
    envelope = entry.envelope
    assert entry.canonical_bytes() == data
    assert canonical_json(json.loads(data)) == data
    assert envelope.body_bytes == envelope.body.canonical_bytes()
    assert data.startswith(b'{"body":' + envelope.body_bytes + b',"outcome":"')
    assert envelope.shape_checked
    validate_shape(envelope.body)


@settings(max_examples=1500, deadline=None)
@given(changed())
def test_whatever_is_accepted_is_canonical_and_well_shaped(data: bytes) -> None:
    """Changed entries: refused as unreadable, or accepted only as their exact encoding."""
    check_decoding(data)


@pytest.mark.parametrize("data", ENTRIES)
def test_real_entries_decode_to_their_own_bytes(data: bytes) -> None:
    """Every kind of sample entry decodes, and re-encodes to the very same bytes."""
    assert Entry.from_canonical_bytes(data).canonical_bytes() == data
    check_decoding(data)


@pytest.mark.parametrize(
    "hex_bytes",
    [KEY, b"\xab" * 32, b"\xaa" * 64],
    ids=["body-bytes-field", "endorsement-path-hash", "signature-value"],
)
def test_upper_case_hex_is_not_the_canonical_entry(hex_bytes: bytes) -> None:
    """Upper-case hex parses to the same bytes but is not the canonical encoding: refused
    MALFORMED, wherever it is (a bytes field of the body, a path, a signature)."""
    old = hex_bytes.hex().encode()
    (data,) = [data for data in ENTRIES if old in data]
    with pytest.raises(Refused) as refused:
        Entry.from_canonical_bytes(data.replace(old, old.upper()))
    assert refused.value.reason is Reason.MALFORMED
