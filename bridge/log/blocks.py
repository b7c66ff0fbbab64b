"""Blocks of the settlement log: sealing entries, hashing headers, attesting and finality.

A block seals a contiguous run of entries: its header carries the height, the previous block's
hash (the genesis hash for block 1), the Merkle root of the entries' canonical bytes, the
logical time of sealing, the first sequence number and the entry count. A central bank attests
a height by signing its block's hash; since each header commits to its predecessor, that covers
the chain up to it. A block is final once a quorum of distinct central banks has attested it or
a later height.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from bridge.crypto import Signer, Verifier
from bridge.domain import ATTESTATION_DOMAIN, Entry, Millis, ParticipantId, canonical_json
from bridge.log.merkle import merkle_root

BLOCK_DOMAIN = b"cbdc-bridge/v1/block\x00"


@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    prev_hash: bytes
    merkle_root: bytes
    time: Millis
    first_seq: int
    entry_count: int

    def to_fields(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "prev_hash": self.prev_hash.hex(),
            "merkle_root": self.merkle_root.hex(),
            "time": self.time,
            "first_seq": self.first_seq,
            "entry_count": self.entry_count,
        }

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> BlockHeader:
        return cls(
            height=int(data["height"]),
            prev_hash=bytes.fromhex(data["prev_hash"]),
            merkle_root=bytes.fromhex(data["merkle_root"]),
            time=int(data["time"]),
            first_seq=int(data["first_seq"]),
            entry_count=int(data["entry_count"]),
        )

    def hash(self) -> bytes:
        return sha256(BLOCK_DOMAIN + canonical_json(self.to_fields())).digest()


@dataclass(frozen=True, slots=True)
class Attestation:
    """A central bank's signature over a block hash, after replaying the block itself."""

    height: int
    block_hash: bytes
    central_bank: ParticipantId
    signature: bytes


@dataclass(frozen=True, slots=True)
class SealedBlock:
    header: BlockHeader
    entries: tuple[Entry, ...]
    entry_bytes: tuple[bytes, ...]  # canonical bytes of each entry: the Merkle leaves


def seal(height: int, prev_hash: bytes, entries: Sequence[Entry], time: Millis) -> SealedBlock:
    """Seal a non-empty run of consecutive entries into the block at `height`."""
    if not entries:
        raise ValueError("a block holds at least one entry")
    entry_bytes = tuple(entry.canonical_bytes() for entry in entries)
    header = BlockHeader(
        height=height,
        prev_hash=prev_hash,
        merkle_root=merkle_root(entry_bytes),
        time=time,
        first_seq=entries[0].seq,
        entry_count=len(entries),
    )
    return SealedBlock(header, tuple(entries), entry_bytes)


def attestation_message(block_hash: bytes) -> bytes:
    return ATTESTATION_DOMAIN + block_hash


def attest(header: BlockHeader, central_bank: ParticipantId, signer: Signer) -> Attestation:
    block_hash = header.hash()
    return Attestation(
        header.height, block_hash, central_bank, signer.sign(attestation_message(block_hash))
    )


def attestation_valid(attestation: Attestation, public_key: bytes, verifier: Verifier) -> bool:
    return verifier.verify(
        public_key, attestation_message(attestation.block_hash), attestation.signature
    )


def is_final(attestations: Iterable[Attestation], block_hash: bytes, quorum: int) -> bool:
    """Final when `quorum` distinct central banks attested this exact block hash."""
    return len({a.central_bank for a in attestations if a.block_hash == block_hash}) >= quorum


def final_height(attested: Mapping[str, int], quorum: int) -> int:
    """The highest height that `quorum` central banks attested, or attested a later height of
    (`attested`: each central bank's highest valid attestation on the chain). An attestation
    of height h signs h's header, which commits to every block before it: it covers 1..h."""
    if quorum <= 0 or len(attested) < quorum:
        return 0
    return sorted(attested.values(), reverse=True)[quorum - 1]
