"""The settlement log as tidy tables: their schema, how rows derive from entries, how they print.

One schema (`TABLES`) serves the exporter, the verifier of exports (which re-derives every row
and compares), the report and the data dictionary (docs/log-data-dictionary.md is generated
from it by `data_dictionary_markdown`, and a test keeps the two equal).

Rows derive from the replay: `RowDeriver.rows(entry, height, ledger, batch)` is called right
after the ledger applied `entry`, with the `Batch` of exactly that entry's changes, so balance
history and participant rows come from what the ledger itself changed.

Encodings. CSV: RFC 4180 with `\\n` line ends, integers in decimal, booleans `true`/`false`,
NULL as an empty field. JSONL: one compact JSON object per line, keys in column order, ASCII.
The `canonical` column holds an entry's canonical bytes as text, byte for code point
(latin-1); canonical entries are ASCII JSON, so the text is the entry itself.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bridge.core.ledger import Batch, Ledger
from bridge.domain import (
    AcceptPvp,
    DualPvp,
    Entry,
    Genesis,
    Issue,
    Leg,
    Millis,
    Outcome,
    Participant,
    ParticipantId,
    Pay,
    ProposePvp,
    Redeem,
)
from bridge.log.blocks import Attestation, BlockHeader

Value = int | str | bool | float | None
Row = tuple[Value, ...]
PvpKey = tuple[ParticipantId, str]

# 2: refusals gained recorded_by (the bridge or a central bank node)
# 3: signing times and settlement latency (entries, legs)
SCHEMA_VERSION = 3


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # DuckDB / Parquet logical type: BIGINT, INTEGER, VARCHAR, BOOLEAN, DOUBLE, TIMESTAMP
    unit: str
    description: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    grain: str  # what one row is
    description: str
    columns: tuple[Column, ...]
    verified: bool = True  # re-derived and compared row by row by `log verify`

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def index(self, name: str) -> int:
        return self.names.index(name)


_MINOR = "minor units of `{}` (divide by 10^exponent, see `currencies`)"
_MAJOR = "major units of `{}` (float, for analysis; the exact value is `{}`)"
_MS = "ms (logical clock)"
_SIGNER_MS = "ms (signer's clock)"
_TIME = "UTC timestamp"


def _time_column(of: str = "time_ms", name: str = "time") -> Column:
    return Column(name, "TIMESTAMP", _TIME, f"`{of}` as a timestamp (millisecond precision).")


def _signing_columns(signed: str, latency: str) -> tuple[Column, ...]:
    return (
        Column("signed_at_ms", "BIGINT", _SIGNER_MS, signed),
        _time_column("signed_at_ms", "signed_at"),
        Column("latency_ms", "BIGINT", "ms", latency),
    )


def _major_column(name: str, currency: str) -> Column:
    return Column(
        f"{name}_major", "DOUBLE", _MAJOR.format(currency, name), f"`{name}` / 10^exponent."
    )


ENTRIES = Table(
    "entries",
    "log entry (an accepted instruction and its outcome)",
    "The settlement log in order. Kind-specific columns are NULL where they do not apply.",
    (
        Column("seq", "BIGINT", "", "Position in the log: 1, 2, 3, ... without gaps. Key."),
        Column("height", "BIGINT", "", "Block that seals the entry (`blocks.height`)."),
        Column("time_ms", "BIGINT", _MS, "When the bridge applied the instruction."),
        _time_column(),
        Column(
            "kind",
            "VARCHAR",
            "",
            "Instruction kind: admit_bank, set_status, set_policy, freeze_account, issue, "
            "redeem, pay, pvp_propose, pvp_accept, pvp_reject, pvp_cancel, pvp_expire, pvp_dual.",
        ),
        Column(
            "outcome",
            "VARCHAR",
            "",
            "APPLIED, ISSUED, REDEEMED, SETTLED, HELD, REJECTED, CANCELLED or EXPIRED.",
        ),
        Column("sender", "VARCHAR", "", "Participant that sent (and signed) the instruction."),
        Column("instruction_id", "VARCHAR", "", "Sender-chosen id; (sender, id) is unique."),
        Column(
            "counterparty",
            "VARCHAR",
            "",
            "Other participant named: payee (pay), recipient (issue), counterparty (PvP "
            "propose/dual), proposer (accept/reject/expire), bank (admin kinds).",
        ),
        Column("currency", "VARCHAR", "ISO 4217", "Currency of pay, issue, redeem, freeze."),
        Column("amount", "BIGINT", _MINOR.format("currency"), "Amount of pay, issue, redeem."),
        _major_column("amount", "currency"),
        Column("pay_currency", "VARCHAR", "ISO 4217", "PvP: currency the proposer pays."),
        Column("pay_amount", "BIGINT", _MINOR.format("pay_currency"), "PvP: proposer's leg."),
        _major_column("pay_amount", "pay_currency"),
        Column("receive_currency", "VARCHAR", "ISO 4217", "PvP: currency the proposer gets."),
        Column("receive_amount", "BIGINT", _MINOR.format("receive_currency"), "PvP: other leg."),
        _major_column("receive_amount", "receive_currency"),
        Column(
            "rate",
            "VARCHAR",
            "decimal text",
            "PvP: agreed rate as the parties wrote it (not checked against the amounts; the "
            "implied rate is receive/pay in major units).",
        ),
        Column("settle_by_ms", "BIGINT", _MS, "PvP proposal: held until this time at most."),
        Column("pvp_proposer", "VARCHAR", "", "PvP kinds: proposer part of the PvP key."),
        Column("pvp_id", "VARCHAR", "", "PvP kinds: id part of the PvP key."),
        Column("reference", "VARCHAR", "", "Trade reference (invoice, bill of lading)."),
        Column("valid_until_ms", "BIGINT", _MS, "Instruction refused if applied after this."),
        *_signing_columns(
            "When the sender signed the instruction: `signed_at` of its body (UTC ms from the "
            "signer's own clock, covered by its signatures).",
            "time_ms - signed_at_ms: from the signature to the entry; the settlement latency of "
            "a settling entry. Negative (by 5 minutes at most) when the signer's clock ran "
            "ahead of the bridge's.",
        ),
        Column("signatures", "INTEGER", "count", "Signatures and endorsements carried."),
        Column("body_hash", "VARCHAR", "hex SHA-256", "Hash of the canonical instruction body."),
        Column(
            "canonical",
            "VARCHAR",
            "text",
            "The entry's canonical bytes (the Merkle leaf), byte for code point; verify "
            "re-checks everything else against it.",
        ),
    ),
)

BLOCKS = Table(
    "blocks",
    "sealed block",
    "Block headers of the hash chain, with attestation counts and finality.",
    (
        Column("height", "BIGINT", "", "1, 2, 3, ... Key."),
        Column("hash", "VARCHAR", "hex SHA-256", "Hash of the header (what banks attest)."),
        Column("prev_hash", "VARCHAR", "hex SHA-256", "Previous block hash (genesis for 1)."),
        Column("merkle_root", "VARCHAR", "hex SHA-256", "RFC 6962 root of the entries."),
        Column("time_ms", "BIGINT", _MS, "When the block was sealed."),
        _time_column(),
        Column("first_seq", "BIGINT", "", "Seq of the block's first entry."),
        Column("entry_count", "BIGINT", "count", "Entries in the block."),
        Column("attestations", "INTEGER", "count", "Valid attestations of this header."),
        Column("final", "BOOLEAN", "", "A quorum of central banks attested this header."),
    ),
)

ATTESTATIONS = Table(
    "attestations",
    "central bank signature over one block hash",
    "Attestations as stored; `valid` says whether the signature verifies for this header.",
    (
        Column("height", "BIGINT", "", "Block attested."),
        Column("central_bank", "VARCHAR", "", "Attesting central bank."),
        Column("block_hash", "VARCHAR", "hex SHA-256", "Hash the central bank signed."),
        Column("signature", "VARCHAR", "hex r||s (64 bytes)", "P-256 signature."),
        Column("valid", "BOOLEAN", "", "Signature verifies and the hash is the header's."),
    ),
)

LEGS = Table(
    "legs",
    "movement of value from one participant to another",
    "Every leg that moved funds: payments, both legs of each settled PvP, issuance "
    "(central bank to bank) and redemption (bank to central bank).",
    (
        Column("seq", "BIGINT", "", "Entry that settled the leg."),
        Column("height", "BIGINT", "", "Block of that entry."),
        Column("time_ms", "BIGINT", _MS, "When it settled."),
        _time_column(),
        Column("kind", "VARCHAR", "", "pay, pvp_dual, pvp_accept, issue or redeem."),
        Column("leg", "INTEGER", "", "1, or 2 for the counterparty's leg of a PvP."),
        Column("payer", "VARCHAR", "", "Participant debited."),
        Column("payee", "VARCHAR", "", "Participant credited."),
        Column("currency", "VARCHAR", "ISO 4217", "Currency moved."),
        Column("exponent", "INTEGER", "digits", "Minor-unit exponent of `currency`."),
        Column("amount", "BIGINT", _MINOR.format("currency"), "Amount moved."),
        _major_column("amount", "currency"),
        Column("payer_jurisdiction", "VARCHAR", "ISO 3166", "Payer's home jurisdiction."),
        Column("payee_jurisdiction", "VARCHAR", "ISO 3166", "Payee's home jurisdiction."),
        Column("corridor", "VARCHAR", "", "`payer_jurisdiction-payee_jurisdiction`, e.g. CN-SG."),
        Column("pvp_proposer", "VARCHAR", "", "PvP legs: proposer part of the PvP key."),
        Column("pvp_id", "VARCHAR", "", "PvP legs: id part of the PvP key."),
        Column("rate", "VARCHAR", "decimal text", "PvP legs: the agreed rate."),
        *_signing_columns(
            "When the instruction that settled the leg was signed: the pay, issue, redeem or "
            "dual-signed PvP itself, the acceptance (not the proposal) of a propose/accept PvP.",
            "time_ms - signed_at_ms: settlement latency, from the signature that completed the "
            "instruction to the entry that settled it.",
        ),
        Column(
            "initiated_ms",
            "BIGINT",
            _MS,
            "When the settlement began: the proposal's entry time for a propose/accept PvP, "
            "otherwise the settling entry's own time.",
        ),
        Column(
            "propose_to_accept_ms",
            "BIGINT",
            "ms",
            "time_ms - initiated_ms: how long a two-phase PvP waited for its counterparty to "
            "accept, 0 otherwise (a business decision, not settlement work: see latency_ms).",
        ),
        Column(
            "reference",
            "VARCHAR",
            "",
            "Trade reference of the instruction (of the proposal, for an accepted PvP).",
        ),
    ),
)

BALANCES = Table(
    "balances",
    "account changed by an entry, with its balance after that entry",
    "Per-account balance history: the last row of an account is its balance at the end.",
    (
        Column("seq", "BIGINT", "", "Entry that changed the account."),
        Column("time_ms", "BIGINT", _MS, "When."),
        _time_column(),
        Column("participant", "VARCHAR", "", "Account owner."),
        Column("currency", "VARCHAR", "ISO 4217", "Account currency."),
        Column("exponent", "INTEGER", "digits", "Minor-unit exponent of `currency`."),
        Column("available", "BIGINT", _MINOR.format("currency"), "Available after the entry."),
        Column("held", "BIGINT", _MINOR.format("currency"), "Reserved by held PvPs, after."),
        _major_column("available", "currency"),
        _major_column("held", "currency"),
        Column("available_change", "BIGINT", _MINOR.format("currency"), "Change by the entry."),
        Column("held_change", "BIGINT", _MINOR.format("currency"), "Change by the entry."),
    ),
)

PARTICIPANTS = Table(
    "participants",
    "participant record, as founded (genesis) or changed by an entry",
    "Participant history: genesis central banks (seq 0), admissions and status changes.",
    (
        Column("seq", "BIGINT", "", "Entry that made the change; 0 for genesis."),
        Column("participant", "VARCHAR", "", "Participant id."),
        Column("kind", "VARCHAR", "", "central_bank or commercial_bank."),
        Column("jurisdiction", "VARCHAR", "ISO 3166", "Home jurisdiction."),
        Column("home_central_bank", "VARCHAR", "", "Central bank that admitted it (or itself)."),
        Column("status", "VARCHAR", "", "active or suspended."),
        Column("public_key", "VARCHAR", "hex SEC1", "P-256 public key (65 bytes)."),
    ),
)

CURRENCIES = Table(
    "currencies",
    "currency on the bridge",
    "Currencies from the genesis, with the exponent that scales every amount.",
    (
        Column("currency", "VARCHAR", "ISO 4217", "Currency code. Key."),
        Column("exponent", "INTEGER", "digits", "Minor units per major unit = 10^exponent."),
        Column("issuer", "VARCHAR", "", "Issuing central bank."),
        Column("jurisdiction", "VARCHAR", "ISO 3166", "Issuer's jurisdiction."),
    ),
)

REFUSALS = Table(
    "refusals",
    "refused instruction",
    "Copied from the source's `refusals` table: instructions the bridge refused (the newest "
    "100,000), then, with `log export --node-refusals`, those central bank nodes refused "
    "before forwarding them (each node's newest 100,000). Refusals change nothing, so they "
    "are not in the signed log: this table is informational and not verified.",
    (
        Column(
            "id",
            "BIGINT",
            "",
            "Number of the refusal where it was recorded, increasing. Key with recorded_by.",
        ),
        Column(
            "recorded_by",
            "VARCHAR",
            "",
            "Who refused it and recorded it: `bridge`, or the central bank whose node did. Key.",
        ),
        Column("time_ms", "BIGINT", _MS, "When it was refused (the recorder's clock)."),
        _time_column(),
        Column("sender", "VARCHAR", "", "Sender of the refused instruction."),
        Column("instruction_id", "VARCHAR", "", "Its instruction id."),
        Column("kind", "VARCHAR", "", "Its instruction kind."),
        Column("reason", "VARCHAR", "", "Refusal reason code (docs/ledger-rules.md)."),
        Column(
            "corridor",
            "VARCHAR",
            "",
            "Sender's jurisdiction - the other party's, e.g. CN-SG; NULL when either is unknown.",
        ),
    ),
    verified=False,
)

TABLES: tuple[Table, ...] = (
    ENTRIES,
    BLOCKS,
    ATTESTATIONS,
    LEGS,
    BALANCES,
    PARTICIPANTS,
    CURRENCIES,
    REFUSALS,
)
TABLE_BY_NAME: Mapping[str, Table] = {t.name: t for t in TABLES}


# ---------------------------------------------------------------------------- the store's tables

# The tables of a bridge's SQLite store (`bridge/store/sqlite.py`), which `log verify` reads:
# documented here so the data dictionary covers what an auditor opens, not only exports.
_STATE_ROWS = (
    "`tbl` names the ledger table; `key` and `value` are compact JSON "
    "(`bridge/store/codec.py`): "
    '`participants` `"ID"` → `[kind, jurisdiction, public_key_hex, home_central_bank, '
    'status]`; `currencies` `"CODE"` → `[exponent, issuer]`; `policies` `"CB"` → '
    "`[per_transfer_limit, per_day_limit, [jurisdiction, ...]]`; `frozen` "
    '`["BANK","CODE"]` → `true`; `pvps` `["PROPOSER","PVP_ID"]` → '
    '`[proposal_fields, status, day, closed_seq]`; `usage` `["PAYER","CODE",day]` → '
    'minor units sent that day; `supply` `"CODE"` → `[issued, redeemed]`.'
)

STORE_TABLES: tuple[Table, ...] = (
    Table(
        "meta",
        "store setting",
        "`schema` (store schema version) and `genesis` (the genesis as JSON).",
        (
            Column("key", "TEXT", "", "Setting name. Key."),
            Column("value", "TEXT", "", "Setting value."),
        ),
        verified=True,
    ),
    Table(
        "blocks",
        "sealed block",
        "The hash chain; `log verify` recomputes every hash, link and Merkle root.",
        (
            Column("height", "INTEGER", "", "1, 2, 3, ... Key."),
            Column("hash", "BLOB", "SHA-256 (32 bytes)", "Hash of the header."),
            Column("prev_hash", "BLOB", "SHA-256 (32 bytes)", "Previous block (genesis for 1)."),
            Column("merkle_root", "BLOB", "SHA-256 (32 bytes)", "RFC 6962 root of the entries."),
            Column("time", "INTEGER", _MS, "When the block was sealed."),
            Column("first_seq", "INTEGER", "", "Seq of the block's first entry."),
            Column("entry_count", "INTEGER", "count", "Entries in the block."),
        ),
    ),
    Table(
        "entries",
        "log entry",
        "The log. `data` is the entry's canonical bytes (the Merkle leaf); the other columns "
        "are copies for queries, checked against `data`.",
        (
            Column("seq", "INTEGER", "", "Position in the log. Key."),
            Column("height", "INTEGER", "", "Block holding the entry."),
            Column("sender", "TEXT", "", "Sender of the instruction."),
            Column("instruction_id", "TEXT", "", "Sender-chosen id; (sender, id) is unique."),
            Column("kind", "TEXT", "", "Instruction kind."),
            Column("outcome", "TEXT", "", "Outcome the ledger recorded."),
            Column("time", "INTEGER", _MS, "When the bridge applied it."),
            Column("body_hash", "BLOB", "SHA-256 (32 bytes)", "Hash of the canonical body."),
            Column("data", "BLOB", "canonical JSON", "The entry's canonical bytes."),
        ),
    ),
    Table(
        "attestations",
        "central bank signature over one block hash",
        "Every signature must verify with the genesis key of its central bank.",
        (
            Column("height", "INTEGER", "", "Block attested. Key with `central_bank`."),
            Column("central_bank", "TEXT", "", "Attesting central bank."),
            Column("block_hash", "BLOB", "SHA-256 (32 bytes)", "Hash signed."),
            Column("signature", "BLOB", "r||s (64 bytes)", "P-256 signature."),
        ),
    ),
    Table(
        "accounts",
        "account (participant, currency) in the committed state",
        "Balances the bridge restarts from; compared row by row with the replay.",
        (
            Column("participant", "TEXT", "", "Account owner. Key with `currency`."),
            Column("currency", "TEXT", "ISO 4217", "Account currency."),
            Column("available", "INTEGER", "minor units", "Available balance."),
            Column("held", "INTEGER", "minor units", "Reserved by held PvPs."),
        ),
    ),
    Table(
        "state",
        "row of a key/value ledger table in the committed state",
        "Every other ledger table the bridge restarts from; compared row by row with the "
        "replay. " + _STATE_ROWS,
        (
            Column("tbl", "TEXT", "", "Ledger table. Key with `key`."),
            Column("key", "TEXT", "JSON", "Row key."),
            Column("value", "TEXT", "JSON", "Row value."),
        ),
    ),
    Table(
        "refusals",
        "refused instruction (the newest 100,000 are kept)",
        "Written beside each block's commit, outside the hash chain; exported as `refusals`.",
        (
            Column("id", "INTEGER", "", "Increasing number. Key."),
            Column("time", "INTEGER", _MS, "When the bridge refused it."),
            Column("sender", "TEXT", "", "Sender of the refused instruction."),
            Column("instruction_id", "TEXT", "", "Its instruction id."),
            Column("kind", "TEXT", "", "Its instruction kind."),
            Column("reason", "TEXT", "", "Refusal reason code."),
            Column("corridor", "TEXT", "", "Sender - other party jurisdictions, or empty."),
        ),
        verified=False,
    ),
    Table(
        "outbox",
        "settlement event waiting for (or kept after) publication",
        "Events written in the block's transaction, published over MQTT at least once.",
        (
            Column("id", "INTEGER", "", "Event number. Key."),
            Column("height", "INTEGER", "", "Block that produced the event."),
            Column("payload", "BLOB", "JSON", "The event as published."),
        ),
        verified=False,
    ),
    Table(
        "outbox_cursor",
        "publisher",
        "Last event id each outbox consumer has published.",
        (
            Column("consumer", "TEXT", "", "Consumer name. Key."),
            Column("last_id", "INTEGER", "", "Last published `outbox.id`."),
        ),
        verified=False,
    ),
)

# The file in which a central bank node records the instructions it refused itself
# (`participants/central_bank/refusals.py`), read by `log export --node-refusals`.
NODE_REFUSALS_TABLES: tuple[Table, ...] = (
    Table(
        "meta",
        "file setting",
        "`central_bank` (whose node recorded the refusals) and `chain_id` (of its network).",
        (
            Column("key", "TEXT", "", "Setting name. Key."),
            Column("value", "TEXT", "", "Setting value."),
        ),
        verified=False,
    ),
    Table(
        "refusals",
        "instruction the node refused before forwarding it",
        "Recorded where the refusal was decided, outside any hash chain; exported as "
        "`refusals` rows with `recorded_by` the central bank.",
        (
            Column("id", "INTEGER", "", "Increasing number. Key."),
            Column("time", "INTEGER", "ms (Unix epoch)", "When the node refused it (its clock)."),
            Column(
                "sender",
                "TEXT",
                "",
                "Sender named in the instruction (an issuance request: the requesting bank); "
                "cut to 64 characters and `…` when the instruction was refused as too long.",
            ),
            Column(
                "instruction_id",
                "TEXT",
                "",
                "Its instruction id (an issuance request: the request id); cut like `sender`.",
            ),
            Column("kind", "TEXT", "", "Its instruction kind; empty when it carried no body."),
            Column("reason", "TEXT", "", "Refusal reason code."),
            Column("corridor", "TEXT", "", "Sender - other party jurisdictions, or empty."),
            Column(
                "authenticated",
                "INTEGER",
                "",
                "1 when the sender named signed it (its own signature, or its signed issuance "
                "request, verified); 0 when anyone may have sent it in that name. Kept apart: "
                "the newest 100,000 rows of 1 and the newest 10,000 of 0.",
            ),
        ),
        verified=False,
    ),
)


# ---------------------------------------------------------------------------- encodings


def text_of(data: bytes) -> str:
    """Bytes as text, byte for code point (exact for any bytes)."""
    return data.decode("latin-1")


def bytes_of(text: str) -> bytes:
    """Inverse of `text_of`; raises UnicodeEncodeError beyond U+00FF."""
    return text.encode("latin-1")


def csv_field(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class CsvCodec:
    """One CSV line per row (no line end), exactly as the exporter writes it."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def line(self, values: Sequence[Value]) -> str:
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._writer.writerow([csv_field(v) for v in values])
        return buffer.getvalue()[:-1]

    @staticmethod
    def fields(line: str) -> list[str]:
        return next(csv.reader([line]), [])


def jsonl_line(table: Table, values: Sequence[Value]) -> str:
    return json.dumps(dict(zip(table.names, values, strict=True)), separators=(",", ":"))


# ---------------------------------------------------------------------------- rows


_COUNTERPARTY_FIELD = {
    "pay": "payee",
    "issue": "to",
    "pvp_propose": "counterparty",
    "pvp_dual": "counterparty",
    "pvp_accept": "proposer",
    "pvp_reject": "proposer",
    "pvp_expire": "proposer",
    "admit_bank": "bank",
    "set_status": "participant",
    "freeze_account": "participant",
}


def _opt(body: object, name: str) -> Value:
    value: Value = getattr(body, name, None)
    return None if value == "" else value


def pvp_key(entry: Entry) -> PvpKey | None:
    body = entry.envelope.body
    if isinstance(body, ProposePvp | DualPvp):
        return (body.sender, body.instruction_id)
    pvp_id = getattr(body, "pvp_id", None)
    if not isinstance(pvp_id, str):
        return None
    return (getattr(body, "proposer", body.sender), pvp_id)


def iso_time(time_ms: int) -> str | None:
    """Logical ms as ISO 8601 UTC text with milliseconds (`2025-06-02T01:00:00.123Z`); None
    beyond the years 1-9999."""
    try:
        moment = _EPOCH + timedelta(milliseconds=time_ms)
    except OverflowError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def time_text(moment: datetime) -> str:
    """A timestamp read back from Parquet as the text `iso_time` writes."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def major(amount: Value, exponent: int | None) -> float | None:
    """Minor units as major units (float, for analysis)."""
    if not isinstance(amount, int) or isinstance(amount, bool) or exponent is None:
        return None
    value: float = amount / 10**exponent  # true division: correctly rounded
    return value


_EPOCH = datetime(1970, 1, 1)


def entry_row(entry: Entry, height: int, exponents: Mapping[str, int]) -> Row:
    body = entry.envelope.body
    counterparty = _COUNTERPARTY_FIELD.get(body.KIND)
    key = pvp_key(entry)
    currency = _opt(body, "currency")
    pay_currency = _opt(body, "pay_currency")
    receive_currency = _opt(body, "receive_currency")
    amount = _opt(body, "amount")
    pay_amount = _opt(body, "pay_amount")
    receive_amount = _opt(body, "receive_amount")
    return (
        entry.seq,
        height,
        entry.time,
        iso_time(entry.time),
        body.KIND,
        entry.outcome.value,
        body.sender,
        body.instruction_id,
        None if counterparty is None else getattr(body, counterparty),
        currency,
        amount,
        major(amount, exponents.get(str(currency))),
        pay_currency,
        pay_amount,
        major(pay_amount, exponents.get(str(pay_currency))),
        receive_currency,
        receive_amount,
        major(receive_amount, exponents.get(str(receive_currency))),
        _opt(body, "rate"),
        _opt(body, "settle_by"),
        None if key is None else key[0],
        None if key is None else key[1],
        _opt(body, "reference"),
        body.valid_until,
        body.signed_at,
        iso_time(body.signed_at),
        entry.time - body.signed_at,
        len(entry.envelope.signatures),
        entry.envelope.body_hash().hex(),
        text_of(entry.canonical_bytes()),
    )


def block_row(header: BlockHeader, block_hash: bytes, valid: int, final: bool) -> Row:
    return (
        header.height,
        block_hash.hex(),
        header.prev_hash.hex(),
        header.merkle_root.hex(),
        header.time,
        iso_time(header.time),
        header.first_seq,
        header.entry_count,
        valid,
        final,
    )


def attestation_row(attestation: Attestation, valid: bool) -> Row:
    return (
        attestation.height,
        attestation.central_bank,
        attestation.block_hash.hex(),
        attestation.signature.hex(),
        valid,
    )


def participant_row(seq: int, participant: Participant) -> Row:
    return (
        seq,
        participant.id,
        participant.kind.value,
        participant.jurisdiction,
        participant.home_central_bank,
        participant.status.value,
        participant.public_key.hex(),
    )


def currency_rows(genesis: Genesis) -> list[Row]:
    return [(b.currency, b.exponent, b.id, b.jurisdiction) for b in genesis.central_banks]


@dataclass(frozen=True, slots=True)
class EntryRows:
    """The rows one entry contributes to each derived table."""

    entry: Row
    legs: tuple[Row, ...]
    balances: tuple[Row, ...]
    participants: tuple[Row, ...]


class RowDeriver:
    """Derives table rows entry by entry, following the replaying ledger.

    Keeps only what later rows need: each account's last balance and the entry time of each
    PvP still held (for propose-to-accept latency). Both are bounded by the live state.
    """

    def __init__(self, genesis: Genesis) -> None:
        self.exponents = {b.currency: b.exponent for b in genesis.central_banks}
        self._last: dict[tuple[ParticipantId, str], tuple[int, int]] = {}
        self._proposed_at: dict[PvpKey, Millis] = {}

    def genesis_participants(self, ledger: Ledger) -> list[Row]:
        return [participant_row(0, p) for p in ledger.participants.values()]

    def rows(self, entry: Entry, height: int, ledger: Ledger, batch: Batch) -> EntryRows:
        """Rows of `entry`, just applied by `ledger`; `batch` holds exactly its changes."""
        return EntryRows(
            entry_row(entry, height, self.exponents),
            tuple(self._legs(entry, height, ledger)),
            tuple(self._balances(entry, batch)),
            tuple(
                participant_row(entry.seq, p)
                for p in batch.changes.get("participants", {}).values()
                if p is not None
            ),
        )

    def _balances(self, entry: Entry, batch: Batch) -> Iterator[Row]:
        for account, balance in batch.changes.get("balances", {}).items():
            available, held = (0, 0) if balance is None else balance
            before_available, before_held = self._last.get(account, (0, 0))
            if (available, held) == (before_available, before_held):
                continue
            self._last[account] = (available, held)
            participant, currency = account
            exponent = self.exponents.get(currency)
            yield (
                entry.seq,
                entry.time,
                iso_time(entry.time),
                participant,
                currency,
                exponent,
                available,
                held,
                major(available, exponent),
                major(held, exponent),
                available - before_available,
                held - before_held,
            )

    def _legs(self, entry: Entry, height: int, ledger: Ledger) -> Iterator[Row]:
        body = entry.envelope.body
        key = pvp_key(entry)
        initiated = entry.time
        rate: str | None = None
        reference = _opt(body, "reference")
        legs: tuple[Leg, ...] = ()
        if entry.outcome is Outcome.HELD and key is not None:
            self._proposed_at[key] = entry.time
        elif key is not None and entry.outcome in _CLOSING:
            self._proposed_at.pop(key, None)
        if isinstance(body, Pay):
            legs = (Leg(body.sender, body.payee, body.currency, body.amount),)
        elif isinstance(body, Issue):
            legs = (Leg(body.sender, body.to, body.currency, body.amount),)
        elif isinstance(body, Redeem):
            issuer = ledger.currencies[body.currency].issuer
            legs = (Leg(body.sender, issuer, body.currency, body.amount),)
        elif isinstance(body, DualPvp):
            legs, rate = body.legs(), body.rate
        elif isinstance(body, AcceptPvp) and key is not None:
            proposal = ledger.pvps[key].proposal
            legs, rate = proposal.legs(), proposal.rate
            reference = proposal.reference or None
            initiated = self._proposed_at.pop(key, entry.time)
        if entry.outcome is not Outcome.SETTLED and not isinstance(body, Issue | Redeem):
            return
        is_pvp = isinstance(body, DualPvp | AcceptPvp)
        for number, leg in enumerate(legs, start=1):
            payer_j = ledger.participants[leg.payer].jurisdiction
            payee_j = ledger.participants[leg.payee].jurisdiction
            exponent = self.exponents.get(leg.currency)
            yield (
                entry.seq,
                height,
                entry.time,
                iso_time(entry.time),
                body.KIND,
                number,
                leg.payer,
                leg.payee,
                leg.currency,
                exponent,
                leg.amount,
                major(leg.amount, exponent),
                payer_j,
                payee_j,
                f"{payer_j}-{payee_j}",
                key[0] if is_pvp and key else None,
                key[1] if is_pvp and key else None,
                rate,
                body.signed_at,
                iso_time(body.signed_at),
                entry.time - body.signed_at,
                initiated,
                entry.time - initiated,
                reference,
            )


_CLOSING = frozenset({Outcome.REJECTED, Outcome.CANCELLED, Outcome.EXPIRED})


# ---------------------------------------------------------------------------- dictionary


def data_dictionary_markdown() -> str:
    """docs/log-data-dictionary.md, generated from `TABLES`."""
    out = [
        "# Settlement log data dictionary",
        "",
        "Tables written by `cbdc-bridge log export --format csv|jsonl|parquet` (one file per",
        "table, `<table>.<format>`, plus `genesis.json`, `manifest.json` and",
        "`datapackage.json`). Generated from `bridge/log/tables.py`; a test fails when this page",
        "is stale. The same dictionary travels inside every export: `datapackage.json` is a",
        "[Frictionless Data Package](https://specs.frictionlessdata.io/data-package/) with a",
        "Table Schema per table (types, descriptions, units, keys), and every Parquet file",
        "carries its table's description, schema and column notes as key/value metadata",
        "(`cbdc-bridge.table`, `cbdc-bridge.schema`, `cbdc-bridge.column.<name>`).",
        "",
        "Conventions:",
        "",
        "- **Amounts** are integers in **minor units** of their currency. Divide by",
        "  `10^exponent` (column `exponent`, or the `currencies` table) for major units:",
        "  `amount / 10^2` CNY. Amounts are never floats; the `*_major` columns repeat them in",
        "  major units as floats, for analysis only.",
        "- **Times** are integers in **milliseconds** of the bridge's logical clock (Unix",
        "  epoch ms), with a `time` column repeating them as a UTC timestamp: a Parquet",
        "  TIMESTAMP, ISO 8601 text (`2025-06-02T01:00:00.123Z`) in CSV and JSONL.",
        "  `signed_at_ms` is the signer's own clock (the `signed_at` of the signed body, same",
        "  scale), repeated as the timestamp `signed_at`; `latency_ms` is `time_ms -",
        '  signed_at_ms` (docs/ledger-rules.md, "Signing time and settlement latency").',
        "- **Hashes, keys and signatures** are lower-case hex.",
        "- **NULL** is an empty field in CSV, `null` in JSONL, NULL in Parquet.",
        "- **Types** are DuckDB / Parquet logical types; CSV and JSONL carry the same values.",
        "- **Verified**: `cbdc-bridge log verify EXPORT_DIR` re-derives every row of a verified",
        "  table from the canonical entries and compares it byte for byte (CSV, JSONL) or value",
        "  for value (Parquet), so an export can be audited like the store it came from.",
        "- **Incremental**: `log export --append` adds exactly the rows of the blocks after the",
        "  export's head (Parquet tables gain `<table>.part-<height>.parquet` files, listed in",
        "  `datapackage.json`); `--follow` keeps appending final blocks as they come.",
        "",
        "`genesis.json` holds the canonical genesis (central banks, their keys and currencies,",
        "the attestation quorum); `manifest.json` the format, row counts, chain id, genesis",
        "hash and head block. All three documents are checked by `log verify`.",
        "",
    ]
    for table in TABLES:
        out += _table_markdown(table, "##")
    out += [
        "## The store's own tables",
        "",
        "What `cbdc-bridge log verify` reads in a bridge's SQLite store",
        "(`bridge/store/sqlite.py`). Types are SQLite's. Verified: the rows are recomputed from",
        "the log (blocks, entries, attestations) or compared row by row with its replay",
        "(accounts, state); `meta` holds the genesis every check starts from.",
        "",
    ]
    for table in STORE_TABLES:
        out += _table_markdown(table, "###", "store table ")
    out += [
        "## A central bank node's refusals file",
        "",
        "What a central bank node refused before forwarding it to the bridge (a bad signature,",
        "a bank of another central bank, a body of the wrong kind or shape, an endorsement a",
        "peer node asked for): one SQLite file per node, `<network>/state/<CB>.refusals.sqlite`",
        "(`participants/central_bank/refusals.py`). Refusals the node only passed on are",
        "recorded where they were decided (the bridge, or the peer node), so each refusal is",
        "in exactly one place. `cbdc-bridge log export --node-refusals FILE` (and `log report",
        "--node-refusals FILE`) adds them to the `refusals` table; the operators read them",
        "with `CentralBankAdmin.ListRefusals`, a bank its own with `CentralBank.GetRefusals`.",
        "",
    ]
    for table in NODE_REFUSALS_TABLES:
        out += _table_markdown(table, "###", "node file table ")
    return "\n".join(out)


def _table_markdown(table: Table, level: str, prefix: str = "") -> list[str]:
    out = [
        f"{level} {prefix}`{table.name}`",
        "",
        f"Grain: one row per {table.grain}. {table.description}",
        f"Verified: {'yes' if table.verified else 'no'}.",
        "",
        "| column | type | unit | description |",
        "|---|---|---|---|",
    ]
    for column in table.columns:
        unit = column.unit or "-"
        out.append(f"| `{column.name}` | {column.type} | {unit} | {column.description} |")
    out.append("")
    return out
