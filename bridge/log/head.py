"""Signed heads: a central bank's attestation of the latest block it replayed, as a file.

A copy of the log cut short still verifies as a shorter log: every block in it is intact. What
shows the cut is a later block that a central bank signed: `cbdc-bridge log head` fetches the
latest attested block from a central bank node (`CentralBank.GetSignedHead`) and writes it as
JSON; `cbdc-bridge log verify --head FILE` then fails when the log ends before that height, or
holds another block there.

The file carries the block header, so a reader can recompute the block hash and check the
central bank's signature over it with the genesis keys alone:

    {"type": "cbdc-bridge/signed-head", "version": 1, "chain_id": ..., "genesis_hash": hex,
     "block": {height, prev_hash, merkle_root, time, first_seq, entry_count, hash},
     "attestation": {"central_bank": ..., "block_hash": hex, "signature": hex}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.crypto import Verifier
from bridge.domain import Genesis
from bridge.log.blocks import Attestation, BlockHeader, attestation_valid

HEAD_TYPE = "cbdc-bridge/signed-head"
HEAD_VERSION = 1


class HeadError(ValueError):
    """Raised when a signed-head document cannot be read."""


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A block header and one central bank's attestation of it."""

    chain_id: str
    genesis_hash: bytes
    header: BlockHeader
    attestation: Attestation

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def central_bank(self) -> str:
        return self.attestation.central_bank

    def to_json(self) -> dict[str, Any]:
        return {
            "type": HEAD_TYPE,
            "version": HEAD_VERSION,
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash.hex(),
            "block": {**self.header.to_fields(), "hash": self.header.hash().hex()},
            "attestation": {
                "central_bank": self.attestation.central_bank,
                "block_hash": self.attestation.block_hash.hex(),
                "signature": self.attestation.signature.hex(),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SignedHead:
        if data.get("type") != HEAD_TYPE or data.get("version") != HEAD_VERSION:
            raise HeadError(f"not a {HEAD_TYPE} version {HEAD_VERSION}")
        try:
            header = BlockHeader.from_fields(data["block"])
            attested = data["attestation"]
            attestation = Attestation(
                header.height,
                bytes.fromhex(attested["block_hash"]),
                str(attested["central_bank"]),
                bytes.fromhex(attested["signature"]),
            )
            return cls(
                str(data["chain_id"]), bytes.fromhex(data["genesis_hash"]), header, attestation
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HeadError(f"malformed signed head: {exc!r}") from exc

    def problem(self, genesis: Genesis, verifier: Verifier) -> str | None:
        """Why this head does not belong to `genesis`'s ledger or does not verify, or None."""
        if self.chain_id != genesis.chain_id or self.genesis_hash != genesis.hash():
            return (
                f"it is for chain {self.chain_id!r} (genesis {self.genesis_hash.hex()[:16]}...), "
                f"not this log's {genesis.chain_id!r} ({genesis.hash().hex()[:16]}...)"
            )
        key = next((b.public_key for b in genesis.central_banks if b.id == self.central_bank), None)
        if key is None:
            return f"{self.central_bank} is not a central bank of this ledger"
        if self.attestation.block_hash != self.header.hash():
            return "the attested hash is not the hash of the block header it carries"
        if not attestation_valid(self.attestation, key, verifier):
            return f"the signature does not verify with {self.central_bank}'s public key"
        return None


def signed_head_from_proto(msg: Any) -> SignedHead:
    """A `bridge.v1.SignedHead` message as a `SignedHead`."""
    from bridge import wire  # the wire layer imports the generated code; only callers need it

    return SignedHead(
        chain_id=str(msg.chain_id),
        genesis_hash=bytes(msg.genesis_hash),
        header=wire.header_from_proto(msg.header),
        attestation=wire.attestation_from_proto(msg.attestation),
    )
