"""Blocks of the settlement log: sealing, header hashing, attestations and finality."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from hashlib import sha256
from typing import Any

import pytest

from bridge.crypto import FastVerifier, PrivateKey, ReferenceVerifier
from bridge.domain import (
    ATTESTATION_DOMAIN,
    Entry,
    Envelope,
    Outcome,
    Pay,
    Signature,
    canonical_json,
)
from bridge.log.blocks import (
    BLOCK_DOMAIN,
    Attestation,
    BlockHeader,
    attest,
    attestation_message,
    attestation_valid,
    final_height,
    is_final,
    seal,
)
from bridge.log.merkle import merkle_root

HEADER = BlockHeader(
    height=7,
    prev_hash=b"\x11" * 32,
    merkle_root=b"\x22" * 32,
    time=1_728_000_000_000,
    first_seq=301,
    entry_count=42,
)


def changed(header: BlockHeader, name: str) -> BlockHeader:
    """`header` with field `name` altered by the smallest step."""
    value = getattr(header, name)
    new: Any = bytes([value[0] ^ 1]) + value[1:] if isinstance(value, bytes) else value + 1
    return replace(header, **{name: new})


def entries(count: int, first_seq: int = 1) -> list[Entry]:
    out = []
    for offset in range(count):
        body = Pay(f"pay-{offset}", "ICBC", 10**15, "BOCHK", "CNY", 100 + offset, "invoice")
        out.append(Entry(first_seq + offset, 1000 + offset, Envelope.of(body), Outcome.SETTLED))
    return out


@pytest.mark.parametrize("name", [f.name for f in fields(BlockHeader)])
def test_header_hash_changes_with_every_field(name: str) -> None:
    """Altering any one header field changes the block hash."""
    assert changed(HEADER, name).hash() != HEADER.hash()


def test_header_hash_is_domain_separated_canonical_json() -> None:
    """The block hash is SHA-256 of the block domain tag and the canonical header fields."""
    expected = sha256(BLOCK_DOMAIN + canonical_json(HEADER.to_fields())).digest()
    assert HEADER.hash() == expected


def test_header_fields_round_trip() -> None:
    """A header rebuilt from its fields is equal and hashes the same."""
    again = BlockHeader.from_fields(HEADER.to_fields())
    assert again == HEADER
    assert again.hash() == HEADER.hash()


def test_seal_commits_to_entries_in_order() -> None:
    """A sealed block's root is the Merkle root of its entries' canonical bytes, in order."""
    run = entries(5, first_seq=11)
    block = seal(3, b"\x00" * 32, run, 5000)
    assert block.entry_bytes == tuple(e.canonical_bytes() for e in run)
    assert block.header.merkle_root == merkle_root(block.entry_bytes)
    assert (block.header.height, block.header.first_seq, block.header.entry_count) == (3, 11, 5)
    assert block.header.time == 5000
    reordered = seal(3, b"\x00" * 32, [run[1], run[0], *run[2:]], 5000)
    assert reordered.header.merkle_root != block.header.merkle_root


def test_seal_refuses_an_empty_block() -> None:
    """A block holds at least one entry."""
    with pytest.raises(ValueError, match="at least one entry"):
        seal(1, b"\x00" * 32, [], 0)


def test_attestation_signs_the_block_hash_and_verifies() -> None:
    """An attestation is the central bank's signature over the domain-tagged block hash."""
    key = PrivateKey.generate()
    attestation = attest(HEADER, "PBOC", key)
    assert attestation.height == HEADER.height
    assert attestation.block_hash == HEADER.hash()
    assert attestation.central_bank == "PBOC"
    assert attestation_message(HEADER.hash()) == ATTESTATION_DOMAIN + HEADER.hash()
    assert attestation_valid(attestation, key.public_key, FastVerifier())
    assert attestation_valid(attestation, key.public_key, ReferenceVerifier())


def test_attestation_invalid_under_another_key_or_other_hash() -> None:
    """An attestation fails for a different key, a different block hash or a flipped bit."""
    key, other = PrivateKey.generate(), PrivateKey.generate()
    attestation = attest(HEADER, "PBOC", key)
    verifier = FastVerifier()
    assert not attestation_valid(attestation, other.public_key, verifier)
    moved = replace(attestation, block_hash=changed(HEADER, "time").hash())
    assert not attestation_valid(moved, key.public_key, verifier)
    last = attestation.signature[-1] ^ 1
    flipped = replace(attestation, signature=attestation.signature[:-1] + bytes([last]))
    assert not attestation_valid(flipped, key.public_key, verifier)


def test_block_is_final_at_quorum_of_distinct_central_banks() -> None:
    """Finality needs `quorum` distinct central banks attesting this exact hash."""
    keys = {cb: PrivateKey.generate() for cb in ("PBOC", "HKMA", "BOT", "CBUAE")}
    block_hash = HEADER.hash()
    votes = [attest(HEADER, cb, key) for cb, key in keys.items()]
    assert not is_final([], block_hash, 3)
    assert not is_final(votes[:2], block_hash, 3)
    assert is_final(votes[:3], block_hash, 3)
    assert is_final(votes, block_hash, 3)


def test_repeated_attestations_by_one_bank_count_once() -> None:
    """The same central bank attesting twice is one vote."""
    key = PrivateKey.generate()
    twice = [attest(HEADER, "PBOC", key), attest(HEADER, "PBOC", key)]
    assert not is_final(twice, HEADER.hash(), 2)
    assert is_final(twice, HEADER.hash(), 1)


def test_a_height_is_final_once_a_quorum_attested_it_or_a_later_height() -> None:
    """The final height is the quorum-th highest height the central banks attested."""
    attested = {"PBOC": 9, "HKMA": 4, "BOT": 7, "CBUAE": 2}
    assert final_height(attested, 1) == 9
    assert final_height(attested, 3) == 4
    assert final_height(attested, 4) == 2
    assert final_height(attested, 5) == 0
    assert final_height({}, 1) == 0


def test_attestations_of_another_hash_do_not_count() -> None:
    """Votes for a different header at the same height do not make this block final."""
    keys = [PrivateKey.generate() for _ in range(3)]
    fork = changed(HEADER, "merkle_root")
    votes: list[Attestation] = [
        attest(HEADER, "PBOC", keys[0]),
        attest(fork, "HKMA", keys[1]),
        attest(fork, "BOT", keys[2]),
    ]
    assert not is_final(votes, HEADER.hash(), 2)
    assert is_final(votes, fork.hash(), 2)


@pytest.mark.parametrize(
    "signer",
    [
        "PBOC",
        "odd name",
        'quo"te',
        "back\\slash",
        "tab\there",
        "del\x7f",
        "caf\u00e9",
        "\u4e2d\u884c",
    ],
)
def test_entry_bytes_encode_signatures_as_compact_json(signer: str) -> None:
    """An entry's signatures are exactly `json.dumps(..., separators=(",", ":"))`, escapes too."""
    body = Pay("pay-1", "ICBC", 10**15, "BOCHK", "CNY", 100, "invoice")
    signatures = (Signature(signer, b"\x01" * 64), Signature("PBOC", b"\xfe" * 64, signer))
    entry = Entry(7, 1000, Envelope.of(body, signatures), Outcome.SETTLED)
    expected = json.dumps(entry.envelope.signatures_fields(), separators=(",", ":")).encode()
    data = entry.canonical_bytes()
    assert b',"sigs":' + expected + b',"time":' in data
    assert json.loads(data)["sigs"] == entry.envelope.signatures_fields()


def test_entry_bytes_of_a_non_string_signer_match_json() -> None:
    """A signer that is not a string (a malformed log) still encodes as `json.dumps` would."""
    body = Pay("pay-1", "ICBC", 10**15, "BOCHK", "CNY", 100, "invoice")
    odd: Any = 7
    entry = Entry(1, 0, Envelope.of(body, (Signature(odd, b"\x01" * 64),)), Outcome.SETTLED)
    assert b',"sigs":[[7,"","' + b"01" * 64 + b'"]],' in entry.canonical_bytes()
