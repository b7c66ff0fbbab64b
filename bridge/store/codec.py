"""Encoding of ledger state rows for the stores (JSON text, the same for SQLite and PostgreSQL).

Balances live in their own `accounts` table (researchers query it); every other state table is
kept as (table, key, value) rows. Receipts are not stored here: they are rebuilt from the
entries table, which is the log itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bridge.core.ledger import Batch, PvpState
from bridge.domain import (
    Currency,
    Outcome,
    Participant,
    ParticipantKind,
    ParticipantStatus,
    Policy,
    ProposePvp,
    instruction_from_fields,
)
from bridge.log.blocks import SealedBlock

# tables persisted as key/value rows; balances and receipts have their own homes
KV_TABLES = ("participants", "currencies", "policies", "frozen", "pvps", "usage", "supply")


# the state rows a ledger loads: all but closed PvPs (looked up when asked for, never loaded)
LOADED_ROWS_QUERY = "SELECT key, value FROM state WHERE tbl={0} AND (tbl <> 'pvps' OR {1} = 'HELD')"
SQLITE_PVP_STATUS = "json_extract(value, '$[1]')"
POSTGRES_PVP_STATUS = "(value::jsonb ->> 1)"


def encode_key(key: Any) -> str:
    return json.dumps(list(key) if isinstance(key, tuple) else key, separators=(",", ":"))


def decode_key(text: str) -> Any:
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


def _participant_out(p: Participant) -> Any:
    return [p.kind.value, p.jurisdiction, p.public_key.hex(), p.home_central_bank, p.status.value]


def _participant_in(key: Any, v: Any) -> Participant:
    return Participant(
        key, ParticipantKind(v[0]), v[1], bytes.fromhex(v[2]), v[3], ParticipantStatus(v[4])
    )


def _pvp_out(s: PvpState) -> Any:
    return [s.proposal.to_fields(), s.status.value, s.day, s.closed_seq]


def _pvp_in(key: Any, v: Any) -> PvpState:
    proposal = instruction_from_fields(v[0])
    assert isinstance(proposal, ProposePvp)
    return PvpState(proposal, Outcome(v[1]), int(v[2]), int(v[3]))


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "participants": _participant_out,
    "currencies": lambda c: [c.exponent, c.issuer],
    "policies": lambda p: [p.per_transfer_limit, p.per_day_limit, list(p.allowed_jurisdictions)],
    "frozen": lambda v: True,
    "pvps": _pvp_out,
    "usage": lambda v: v,
    "supply": lambda v: list(v),
}

_DECODERS: dict[str, Callable[[Any, Any], Any]] = {
    "participants": _participant_in,
    "currencies": lambda k, v: Currency(k, int(v[0]), v[1]),
    "policies": lambda k, v: Policy(int(v[0]), int(v[1]), tuple(v[2])),
    "frozen": lambda k, v: True,
    "pvps": _pvp_in,
    "usage": lambda k, v: int(v),
    "supply": lambda k, v: (int(v[0]), int(v[1])),
}


def encode_value(table: str, value: Any) -> str:
    return json.dumps(_ENCODERS[table](value), separators=(",", ":"))


def decode_row(table: str, key_text: str, value_text: str) -> tuple[Any, Any]:
    key = decode_key(key_text)
    return key, _DECODERS[table](key, json.loads(value_text))


# each central bank's first attestation at or above a height ({0}: the driver's placeholder)
COVERING_QUERY = (
    "SELECT a.height, a.block_hash, a.central_bank, a.signature FROM attestations a JOIN "
    "(SELECT central_bank, MIN(height) AS height FROM attestations WHERE height >= {0} "
    "GROUP BY central_bank) f ON a.central_bank = f.central_bank AND a.height = f.height "
    "ORDER BY a.central_bank"
)


def entry_row_values(block: SealedBlock, batch: Batch) -> list[tuple[Any, ...]]:
    """The `entries` rows of a sealed block: (seq, height, sender, instruction_id, kind,
    outcome, time, body_hash, canonical bytes), the same for every store."""
    receipts = batch.changes.get("receipts", {})
    rows: list[tuple[Any, ...]] = []
    for entry, data in zip(block.entries, block.entry_bytes, strict=True):
        body = entry.envelope.body
        # the receipt already holds the body hash: no need to hash the body again
        receipt = receipts.get((body.sender, body.instruction_id))
        body_hash = entry.envelope.body_hash() if receipt is None else receipt.body_hash
        rows.append(
            (
                entry.seq,
                block.header.height,
                body.sender,
                body.instruction_id,
                body.KIND,
                entry.outcome.value,
                entry.time,
                body_hash,
                data,
            )
        )
    return rows
