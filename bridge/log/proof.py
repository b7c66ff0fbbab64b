"""Inclusion proofs: one entry, its Merkle path, its block header and the block's attestations.

`build_proof(source, selector)` finds an entry (by seq, by `SENDER/INSTRUCTION_ID`, or by an
instruction id that only one sender used) and writes what a third party needs to check, with
only the central banks' public keys, that the entry is in a final block: the entry's canonical
bytes, the RFC 6962 audit path from its leaf to the block's Merkle root, the block header, and
the attestations. Central banks attest heights, and an attestation of a later height covers
the block (each header commits to the one before): when the block's own attestations fall short
of a quorum, the proof adds each missing central bank's first attestation of a later height
(with its `height`) and the `chain` of headers from the block up to the highest of them.

`check_proof(proof, trusted)` recomputes the leaf, walks the path to the root, hashes the
header, links the chain of later headers to it, verifies each attestation against the header
of its height with the trusted keys and counts a quorum. It also verifies
the central bank signatures inside the entry (endorsements, or a central bank's own signature);
banks' own signatures need the banks' keys, which a proof does not carry. The `summary` block
of a proof is for people reading it: the checker rebuilds it from the signed entry bytes and
refuses a proof whose summary differs in anything (an edited amount or outcome), and refuses a
proof whose `chain_id` or `genesis_hash` is not the trusted genesis's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.crypto import FastVerifier, public_key_from_pem
from bridge.domain import (
    CENTRAL_BANK_KINDS,
    Entry,
    Genesis,
    ParticipantId,
    endorsement_message,
    party_message,
)
from bridge.errors import BridgeError, LogIntegrityError, Refused
from bridge.log.blocks import Attestation, BlockHeader, attestation_valid
from bridge.log.merkle import inclusion_path, leaf_hash, verify_inclusion
from bridge.log.source import (
    LogSource,
    SqliteSource,
    StoredBlock,
    StoredEntry,
    StrayAttestation,
)
from bridge.log.tables import bytes_of, text_of

PROOF_TYPE = "cbdc-bridge/inclusion-proof"
PROOF_VERSION = 1


class ProofError(BridgeError):
    """Raised when a proof cannot be built (no such entry, or the log is incoherent there)."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which entry: by seq, by (sender, instruction id), or by an instruction id alone."""

    seq: int | None = None
    sender: str | None = None
    instruction_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        """`123` (a seq), `SENDER/INSTRUCTION_ID`, or `INSTRUCTION_ID`."""
        if text.isdigit():
            return cls(seq=int(text))
        if "/" in text:
            sender, _, instruction_id = text.partition("/")
            return cls(sender=sender, instruction_id=instruction_id)
        return cls(instruction_id=text)

    def matches(self, stored: StoredEntry, entry: Entry) -> bool:
        body = entry.envelope.body
        if self.seq is not None:
            return stored.seq == self.seq
        if self.sender is not None and body.sender != self.sender:
            return False
        return body.instruction_id == self.instruction_id

    def __str__(self) -> str:
        if self.seq is not None:
            return f"entry {self.seq}"
        if self.sender is not None:
            return f"instruction {self.sender}/{self.instruction_id}"
        return f"instruction id {self.instruction_id}"


def build_proof(source: LogSource, selector: Selector) -> dict[str, Any]:
    """The inclusion proof of the selected entry, as a JSON-ready dict."""
    genesis = source.genesis()
    found = _find(source, selector)
    block, entries, index = found
    header = block.header
    attestations, chain = _covering(source, block, genesis.quorum)
    leaves = [leaf_hash(e.data) for e in entries]
    stored = entries[index]
    entry = Entry.from_canonical_bytes(stored.data)
    return {
        "type": PROOF_TYPE,
        "version": PROOF_VERSION,
        "chain_id": genesis.chain_id,
        "genesis_hash": genesis.hash().hex(),
        "entry": {"seq": stored.seq, "canonical": text_of(stored.data)},
        "merkle": {
            "leaf_index": index,
            "tree_size": len(leaves),
            "path": [node.hex() for node in inclusion_path(leaves, index)],
        },
        "block": {**header.to_fields(), "hash": header.hash().hex()},
        "attestations": [
            {
                "central_bank": a.central_bank,
                "block_hash": a.block_hash.hex(),
                "signature": a.signature.hex(),
                **({} if a.height == header.height else {"height": a.height}),
            }
            for a in attestations
        ],
        **({"chain": [h.to_fields() for h in chain]} if chain else {}),
        "summary": _summary(entry),
    }


def _covering(
    source: LogSource, block: StoredBlock, quorum: int
) -> tuple[list[Attestation], list[BlockHeader]]:
    """The block's attestations, and when they are short of a quorum, each other central
    bank's first attestation of a later height, with the headers up to the highest of them."""
    attestations = [s.attestation for s in block.attestations]
    banks = {a.central_bank for a in attestations}
    chain: list[BlockHeader] = []
    if len(banks) >= quorum:
        return attestations, chain
    for later in _blocks_after(source, block.header.height):
        chain.append(later.header)
        for stored in later.attestations:
            if stored.attestation.central_bank not in banks:
                banks.add(stored.attestation.central_bank)
                attestations.append(stored.attestation)
        if len(banks) >= quorum:
            return attestations, chain
    return [s.attestation for s in block.attestations], []  # not final (yet)


def _blocks_after(source: LogSource, height: int) -> Iterator[StoredBlock]:
    if isinstance(source, SqliteSource):
        while (found := source.block_at(height + 1)) is not None:
            yield found[0]
            height += 1
        return
    for item in source.blocks():
        if isinstance(item, StoredBlock) and item.header.height > height:
            yield item


def _summary(entry: Entry) -> dict[str, Any]:
    body = entry.envelope.body
    fields = {k: v for k, v in body.to_fields().items() if k not in ("public_key",)}
    return {"outcome": entry.outcome.value, "time_ms": entry.time, "instruction": fields}


def _candidates(
    source: LogSource, selector: Selector
) -> Iterator[tuple[StoredBlock, list[StoredEntry]]]:
    """Blocks (with their entries) that may hold the entry: looked up in a store, else scanned."""
    if isinstance(source, SqliteSource):
        for height in sorted(
            set(source.locate(selector.seq, selector.sender, selector.instruction_id))
        ):
            found = source.block_at(height)
            if found is not None:
                yield found
        return
    entries = source.entries()
    for item in source.blocks():
        if not isinstance(item, StrayAttestation):
            yield item, [e for _, e in zip(range(item.header.entry_count), entries, strict=False)]


def _find(source: LogSource, selector: Selector) -> tuple[StoredBlock, list[StoredEntry], int]:
    """Find the entry; return its block, the block's entries and its index in the block."""
    needle = None if selector.instruction_id is None else json.dumps(selector.instruction_id)
    matches: list[tuple[StoredBlock, list[StoredEntry], int]] = []
    for block, block_entries in _candidates(source, selector):
        for index, stored in enumerate(block_entries):
            if selector.seq is not None and stored.seq != selector.seq:
                continue
            if needle is not None and needle.encode() not in stored.data:
                continue  # cheap pre-filter before decoding
            try:
                entry = Entry.from_canonical_bytes(stored.data)
            except (Refused, ValueError, KeyError, TypeError) as exc:
                if selector.seq is not None:
                    raise ProofError(f"{stored.where}: not a canonical entry ({exc})") from exc
                continue
            if selector.matches(stored, entry):
                matches.append((block, block_entries, index))
        if len(matches) > 1:
            senders = sorted(
                Entry.from_canonical_bytes(m[1][m[2]].data).envelope.body.sender for m in matches
            )
            raise ProofError(
                f"{selector} is used by several senders ({', '.join(senders)}): "
                "name one as SENDER/INSTRUCTION_ID"
            )
        if matches and selector.seq is not None:
            break
    if not matches:
        raise ProofError(f"{selector} is not in the log")
    return matches[0]


# ---------------------------------------------------------------------------- checking


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """What a checker trusts: central banks' public keys and the quorum (from a genesis or PEMs)."""

    keys: Mapping[ParticipantId, bytes]
    quorum: int
    genesis_hash: bytes | None = None
    chain_id: str | None = None

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> TrustedKeys:
        keys = {b.id: b.public_key for b in genesis.central_banks}
        return cls(keys, genesis.quorum, genesis.hash(), genesis.chain_id)

    @classmethod
    def from_genesis_file(cls, path: Path) -> TrustedKeys:
        return cls.from_genesis(Genesis.from_fields(json.loads(path.read_bytes())))

    @classmethod
    def from_pem_files(cls, files: Mapping[ParticipantId, Path], quorum: int) -> TrustedKeys:
        keys = {cb: public_key_from_pem(path.read_bytes()) for cb, path in files.items()}
        return cls(keys, quorum)


@dataclass(slots=True)
class ProofCheck:
    """Outcome of `check_proof`: `ok` when the entry is proven included in a final block."""

    ok: bool = False
    problem: str = ""
    seq: int = 0
    height: int = 0
    attested_by: list[str] = field(default_factory=list)
    quorum: int = 0
    central_bank_signatures: int = 0
    entry: Entry | None = None

    def describe(self) -> str:
        if not self.ok:
            return f"proof does NOT verify: {self.problem}"
        assert self.entry is not None
        body = self.entry.envelope.body
        return (
            f"proof verifies: entry {self.seq} ({body.KIND} {body.sender}/"
            f"{body.instruction_id}, {self.entry.outcome.value}) is in block {self.height}, "
            f"final: attested by {len(self.attested_by)} central banks "
            f"({', '.join(self.attested_by)}; quorum {self.quorum}); "
            f"{self.central_bank_signatures} central bank signature(s) in the entry verified"
        )


class _Invalid(Exception):
    pass


def check_proof(proof: Mapping[str, Any], trusted: TrustedKeys) -> ProofCheck:
    """Check an inclusion proof against trusted central bank keys only."""
    result = ProofCheck(quorum=trusted.quorum)
    try:
        _check(proof, trusted, result)
    except _Invalid as exc:
        result.problem = str(exc)
        return result
    except (KeyError, TypeError, ValueError, AttributeError, LogIntegrityError) as exc:
        result.problem = f"malformed proof: {exc!r}"
        return result
    result.ok = True
    return result


def _check(proof: Mapping[str, Any], trusted: TrustedKeys, result: ProofCheck) -> None:
    if proof.get("type") != PROOF_TYPE or proof.get("version") != PROOF_VERSION:
        raise _Invalid(f"not a {PROOF_TYPE} version {PROOF_VERSION}")
    if trusted.genesis_hash is not None and proof["genesis_hash"] != trusted.genesis_hash.hex():
        raise _Invalid("the proof is for another ledger (genesis hash differs from the trusted)")
    if trusted.chain_id is not None and proof["chain_id"] != trusted.chain_id:
        raise _Invalid(
            f"the proof is for chain {proof['chain_id']!r}, the trusted genesis is chain "
            f"{trusted.chain_id!r}"
        )
    data = bytes_of(proof["entry"]["canonical"])
    try:
        entry = Entry.from_canonical_bytes(data)
    except Refused as exc:
        raise _Invalid(f"the entry is not canonical: {exc.message}") from exc
    if entry.seq != proof["entry"]["seq"]:
        raise _Invalid(f"the entry's bytes say seq {entry.seq}, the proof {proof['entry']['seq']}")
    header = BlockHeader.from_fields(proof["block"])
    block_hash = header.hash()
    if proof["block"].get("hash") not in (None, block_hash.hex()):
        raise _Invalid("the block hash given does not match the block header")
    index, size = entry.seq - header.first_seq, header.entry_count
    merkle = proof["merkle"]
    if (merkle["leaf_index"], merkle["tree_size"]) != (index, size):
        raise _Invalid(
            f"entry {entry.seq} is not at leaf {merkle['leaf_index']} of block {header.height}"
        )
    path = [bytes.fromhex(node) for node in merkle["path"]]
    if not verify_inclusion(data, index, size, path, header.merkle_root):
        raise _Invalid(
            f"the Merkle path from entry {entry.seq} does not lead to block {header.height}'s root"
        )
    if entry.time > header.time:
        raise _Invalid("the entry is timed after its block was sealed")
    hashes = _chain_hashes(header, block_hash, proof.get("chain", []))
    result.attested_by = _attested_by(proof["attestations"], header.height, hashes, trusted)
    if len(result.attested_by) < trusted.quorum:
        raise _Invalid(
            f"block {header.height} is not final: {len(result.attested_by)} valid attestations, "
            f"quorum {trusted.quorum}"
        )
    result.central_bank_signatures = _entry_central_bank_signatures(entry, trusted)
    difference = _difference("summary", proof.get("summary"), _summary(entry))
    if difference is not None:
        raise _Invalid(f"the summary differs from the signed entry: {difference}")
    result.seq, result.height, result.entry = entry.seq, header.height, entry


def _difference(path: str, given: object, signed: object) -> str | None:
    """The first place where `given` differs from `signed` (JSON values), or None."""
    if isinstance(signed, dict):
        if not isinstance(given, dict):
            return f"{path} is {_shown(given)}, the entry says {_shown(signed)}"
        for key in sorted(set(signed) | set(given)):
            if key not in signed:
                return f"{path}.{key} is not in the entry"
            difference = _difference(f"{path}.{key}", given.get(key, _ABSENT), signed[key])
            if difference is not None:
                return difference
        return None
    if isinstance(signed, list):
        if not isinstance(given, list) or len(given) != len(signed):
            return f"{path} is {_shown(given)}, the entry says {_shown(signed)}"
        for index, (a, b) in enumerate(zip(given, signed, strict=True)):
            difference = _difference(f"{path}[{index}]", a, b)
            if difference is not None:
                return difference
        return None
    if given is _ABSENT:
        return f"{path} is missing (the entry says {_shown(signed)})"
    if given != signed or type(given) is not type(signed):
        return f"{path} is {_shown(given)}, the entry says {_shown(signed)}"
    return None


_ABSENT = object()


def _shown(value: object) -> str:
    text = "missing" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _chain_hashes(
    header: BlockHeader, block_hash: bytes, chain: Sequence[Mapping[str, Any]]
) -> dict[int, bytes]:
    """Height -> header hash, for the block and the later headers that link up from it."""
    hashes = {header.height: block_hash}
    previous, height = block_hash, header.height
    for fields in chain:
        later = BlockHeader.from_fields(fields)
        if later.height != height + 1 or later.prev_hash != previous:
            raise _Invalid(f"the chain's header {later.height} does not link to block {height}")
        previous, height = later.hash(), later.height
        hashes[height] = previous
    return hashes


def _attested_by(
    attestations: Sequence[Mapping[str, Any]],
    height: int,
    hashes: Mapping[int, bytes],
    trusted: TrustedKeys,
) -> list[str]:
    """The trusted central banks that attested the block or a later height of its chain."""
    verifier = FastVerifier()
    banks: set[str] = set()
    for item in attestations:
        bank = item["central_bank"]
        attested = int(item.get("height", height))
        attestation = Attestation(
            attested, bytes.fromhex(item["block_hash"]), bank, bytes.fromhex(item["signature"])
        )
        key = trusted.keys.get(bank)
        if key is None:
            raise _Invalid(f"attestation by {bank}, which is not a trusted central bank")
        if attested < height or attested not in hashes:
            raise _Invalid(f"{bank}'s attestation of height {attested} is not on the proof's chain")
        if attestation.block_hash != hashes[attested]:
            raise _Invalid(f"{bank}'s attestation is for another block hash")
        if not attestation_valid(attestation, key, verifier):
            raise _Invalid(f"{bank}'s attestation signature does not verify")
        banks.add(bank)
    return sorted(banks)


def _entry_central_bank_signatures(entry: Entry, trusted: TrustedKeys) -> int:
    """Verify every signature in the entry made by a trusted central bank."""
    verifier = FastVerifier()
    envelope = entry.envelope
    checked = 0
    for signature in envelope.signatures:
        key = trusted.keys.get(signature.signer)
        if key is None:
            continue  # a bank's own signature: its key is not part of the proof
        if signature.endorses:
            party = envelope.party_signature(signature.endorses)
            if party is None:
                raise _Invalid(f"{signature.signer} endorses a signature that is not there")
            message = endorsement_message(envelope.body_bytes, party.value, signature)
            if message is None:
                raise _Invalid(
                    f"{signature.signer}'s endorsement of {signature.endorses}: leg "
                    f"{signature.index} of {signature.size} has no valid Merkle path"
                )
        elif envelope.body.KIND in CENTRAL_BANK_KINDS:
            message = party_message(envelope.body_bytes)
        else:
            continue
        if not verifier.verify(key, message, signature.value):
            raise _Invalid(f"{signature.signer}'s signature in the entry does not verify")
        checked += 1
    return checked
