"""The bridge's domain: currencies, participants, instructions, signatures and entries.

Everything here is an immutable value. Amounts are integers in minor units, times are logical
milliseconds handed in by the caller (never read from a clock here).

Canonical encoding (the bytes that are signed, hashed and stored) is defined once, in
`canonical_json`: UTF-8 JSON with sorted keys, no insignificant whitespace, ASCII only, integers
as integers and bytes as lower-case hex. See docs/encoding.md.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from operator import attrgetter
from typing import Any, ClassVar

from bridge.bounds import MAX_ID_LENGTH, MAX_REFERENCE_LENGTH, preview
from bridge.errors import Reason, Refused
from bridge.log.merkle import leaf_hash, root_from_path

ParticipantId = str
CurrencyCode = str
InstructionId = str
Millis = int
Amount = int

INT64_MAX = 2**63 - 1
BRIDGE_SENDER = "bridge"
DAY_MS = 86_400_000
# How far a `signed_at` may lie ahead of the ledger's time (the signer's clock running fast)
# and how far behind it (an instruction signed long ago, or a clock far off), both inclusive.
CLOCK_SKEW_MS: Millis = 5 * 60_000
MAX_SIGNED_AGE_MS: Millis = 30 * DAY_MS

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # bridge.bounds, MAX_ID_LENGTH
_CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
_JURISDICTION_PATTERN = re.compile(r"^[A-Z]{2}$")
_RATE_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?$")


# what `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)` builds
# for every call, built once (the encoder keeps no state between calls)
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The one deterministic encoding of a body: sorted keys, compact, ASCII."""
    return _CANONICAL_ENCODER.encode(value).encode()


class ParticipantKind(StrEnum):
    CENTRAL_BANK = "central_bank"
    COMMERCIAL_BANK = "commercial_bank"


class ParticipantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Outcome(StrEnum):
    """What an accepted instruction did to the ledger."""

    APPLIED = "APPLIED"  # administrative change (admission, policy, freeze, status)
    ISSUED = "ISSUED"
    REDEEMED = "REDEEMED"
    SETTLED = "SETTLED"  # payment, dual-signed PvP, or accepted PvP: all legs moved
    HELD = "HELD"  # PvP proposed: proposer's leg is reserved
    REJECTED = "REJECTED"  # PvP rejected by the counterparty: hold released
    CANCELLED = "CANCELLED"  # PvP cancelled by the proposer: hold released
    EXPIRED = "EXPIRED"  # PvP passed its settlement deadline: hold released


@dataclass(frozen=True, slots=True)
class Currency:
    code: CurrencyCode
    exponent: int
    issuer: ParticipantId


@dataclass(frozen=True, slots=True)
class Participant:
    id: ParticipantId
    kind: ParticipantKind
    jurisdiction: str
    public_key: bytes  # SEC1 uncompressed P-256 point
    home_central_bank: ParticipantId  # a central bank is its own home
    status: ParticipantStatus = ParticipantStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Policy:
    """A central bank's rules for legs in its currency. Zero limit means no limit."""

    per_transfer_limit: Amount = 0
    per_day_limit: Amount = 0
    allowed_jurisdictions: tuple[str, ...] = ()  # empty: every jurisdiction allowed


@dataclass(frozen=True, slots=True)
class Leg:
    """One currency moving from payer to payee."""

    payer: ParticipantId
    payee: ParticipantId
    currency: CurrencyCode
    amount: Amount


@dataclass(frozen=True, slots=True)
class GenesisBank:
    id: ParticipantId
    jurisdiction: str
    public_key: bytes
    currency: CurrencyCode
    exponent: int


@dataclass(frozen=True, slots=True)
class Genesis:
    """The founding configuration: central banks, their currencies, the attestation quorum."""

    chain_id: str
    central_banks: tuple[GenesisBank, ...]
    quorum: int

    def to_fields(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "quorum": self.quorum,
            "central_banks": [
                {
                    "id": b.id,
                    "jurisdiction": b.jurisdiction,
                    "public_key": b.public_key.hex(),
                    "currency": b.currency,
                    "exponent": b.exponent,
                }
                for b in self.central_banks
            ],
        }

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Genesis:
        banks = tuple(
            GenesisBank(
                id=b["id"],
                jurisdiction=b["jurisdiction"],
                public_key=bytes.fromhex(b["public_key"]),
                currency=b["currency"],
                exponent=int(b["exponent"]),
            )
            for b in data["central_banks"]
        )
        return cls(chain_id=data["chain_id"], central_banks=banks, quorum=int(data["quorum"]))

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_fields())

    def hash(self) -> bytes:
        return sha256(b"cbdc-bridge/v1/genesis\x00" + self.canonical_bytes()).digest()


# ---------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class Instruction:
    """Common header of every instruction; subclasses add their body fields.

    `signed_at` is when the sender signed the body (UTC milliseconds since the epoch, from its
    own clock): part of the signed body, so the log alone tells how long settlement took. It is
    keyword-only and comes last in the constructor so that body fields keep their positions.
    """

    KIND: ClassVar[str] = ""
    instruction_id: InstructionId
    sender: ParticipantId
    valid_until: Millis
    signed_at: Millis = field(default=0, kw_only=True)

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND}
        for name, _ in _field_plan(type(self)).fields:
            value = getattr(self, name)
            out[name] = value.hex() if isinstance(value, bytes) else value
        return out

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_fields())

    def parties(self) -> tuple[ParticipantId, ...]:
        """Participants whose own signature (and home central bank endorsement) is required."""
        return (self.sender,)


@dataclass(frozen=True, slots=True)
class AdmitBank(Instruction):
    KIND: ClassVar[str] = "admit_bank"
    bank: ParticipantId
    public_key: bytes


@dataclass(frozen=True, slots=True)
class SetParticipantStatus(Instruction):
    KIND: ClassVar[str] = "set_status"
    participant: ParticipantId
    status: str


@dataclass(frozen=True, slots=True)
class SetPolicy(Instruction):
    KIND: ClassVar[str] = "set_policy"
    per_transfer_limit: Amount
    per_day_limit: Amount
    allowed_jurisdictions: tuple[str, ...] = ()

    def to_fields(self) -> dict[str, Any]:
        out = Instruction.to_fields(self)
        out["allowed_jurisdictions"] = list(self.allowed_jurisdictions)
        return out


@dataclass(frozen=True, slots=True)
class FreezeAccount(Instruction):
    KIND: ClassVar[str] = "freeze_account"
    participant: ParticipantId
    currency: CurrencyCode
    frozen: bool


@dataclass(frozen=True, slots=True)
class Issue(Instruction):
    KIND: ClassVar[str] = "issue"
    to: ParticipantId
    currency: CurrencyCode
    amount: Amount


@dataclass(frozen=True, slots=True)
class Redeem(Instruction):
    KIND: ClassVar[str] = "redeem"
    currency: CurrencyCode
    amount: Amount


@dataclass(frozen=True, slots=True)
class Pay(Instruction):
    KIND: ClassVar[str] = "pay"
    payee: ParticipantId
    currency: CurrencyCode
    amount: Amount
    reference: str = ""


@dataclass(frozen=True, slots=True)
class ProposePvp(Instruction):
    """Sender pays `pay_amount` of `pay_currency` to the counterparty, who pays back
    `receive_amount` of `receive_currency`; settles on acceptance before `settle_by`.
    The PvP is identified by (sender, instruction_id)."""

    KIND: ClassVar[str] = "pvp_propose"
    counterparty: ParticipantId
    pay_currency: CurrencyCode
    pay_amount: Amount
    receive_currency: CurrencyCode
    receive_amount: Amount
    rate: str
    settle_by: Millis
    reference: str = ""

    def legs(self) -> tuple[Leg, Leg]:
        return (
            Leg(self.sender, self.counterparty, self.pay_currency, self.pay_amount),
            Leg(self.counterparty, self.sender, self.receive_currency, self.receive_amount),
        )

    def terms_hash(self) -> str:
        return sha256(self.canonical_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class AcceptPvp(Instruction):
    """Counterparty accepts the exact terms (hash of the proposal body) of a held PvP."""

    KIND: ClassVar[str] = "pvp_accept"
    proposer: ParticipantId
    pvp_id: InstructionId
    terms_hash: str


@dataclass(frozen=True, slots=True)
class RejectPvp(Instruction):
    KIND: ClassVar[str] = "pvp_reject"
    proposer: ParticipantId
    pvp_id: InstructionId


@dataclass(frozen=True, slots=True)
class CancelPvp(Instruction):
    KIND: ClassVar[str] = "pvp_cancel"
    pvp_id: InstructionId


@dataclass(frozen=True, slots=True)
class ExpirePvp(Instruction):
    """Issued by the bridge itself when the logical clock passes a PvP's `settle_by`."""

    KIND: ClassVar[str] = "pvp_expire"
    proposer: ParticipantId
    pvp_id: InstructionId

    def parties(self) -> tuple[ParticipantId, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class DualPvp(Instruction):
    """Both legs signed by both banks in one instruction: settles whole or not at all."""

    KIND: ClassVar[str] = "pvp_dual"
    counterparty: ParticipantId
    pay_currency: CurrencyCode
    pay_amount: Amount
    receive_currency: CurrencyCode
    receive_amount: Amount
    rate: str
    reference: str = ""

    def legs(self) -> tuple[Leg, Leg]:
        return (
            Leg(self.sender, self.counterparty, self.pay_currency, self.pay_amount),
            Leg(self.counterparty, self.sender, self.receive_currency, self.receive_amount),
        )

    def parties(self) -> tuple[ParticipantId, ...]:
        return (self.sender, self.counterparty)


INSTRUCTION_TYPES: dict[str, type[Instruction]] = {
    cls.KIND: cls
    for cls in (
        AdmitBank,
        SetParticipantStatus,
        SetPolicy,
        FreezeAccount,
        Issue,
        Redeem,
        Pay,
        ProposePvp,
        AcceptPvp,
        RejectPvp,
        CancelPvp,
        ExpirePvp,
        DualPvp,
    )
}
CENTRAL_BANK_KINDS = frozenset(
    {AdmitBank.KIND, SetParticipantStatus.KIND, SetPolicy.KIND, FreezeAccount.KIND, Issue.KIND}
)


_PLAIN, _HEX, _LIST = 0, 1, 2  # how a field's canonical value becomes the field's value


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    """An instruction class's fields, as its canonical fields hold them, worked out once
    (`dataclasses.fields` builds a new tuple on every call)."""

    fields: tuple[tuple[str, int], ...]  # (name, _PLAIN / _HEX / _LIST), declaration order
    names: frozenset[str]  # the field names and "kind": every key of the canonical fields
    hex: bool  # some field is bytes (hex in the canonical fields)
    plain: bool  # every field is _PLAIN: canonical values are the field values themselves


_FIELD_PLANS: dict[type[Instruction], _FieldPlan] = {}


def _field_plan(cls: type[Instruction]) -> _FieldPlan:
    plan = _FIELD_PLANS.get(cls)
    if plan is None:
        how = {"bytes": _HEX, "tuple[str, ...]": _LIST}
        planned = tuple((f.name, how.get(str(f.type), _PLAIN)) for f in fields(cls))
        plan = _FIELD_PLANS[cls] = _FieldPlan(
            planned,
            frozenset({"kind", *(name for name, _ in planned)}),
            any(kind == _HEX for _, kind in planned),
            all(kind == _PLAIN for _, kind in planned),
        )
    return plan


def instruction_from_fields(data: Mapping[str, Any]) -> Instruction:
    """Rebuild an instruction from its canonical fields; refuses anything malformed."""
    kind = data.get("kind")
    cls = INSTRUCTION_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise Refused(Reason.MALFORMED, f"unknown instruction kind: {_quoted(kind)}")
    plan = _field_plan(cls)
    if plan.plain and type(data) is dict and data.keys() == plan.names:
        # every field there and nothing else, each value taken as it is: what the loop of
        # `_instruction_fields` gives, without its per-field steps
        kwargs = data.copy()
        del kwargs["kind"]
    else:
        kwargs = _instruction_fields(cls, plan, data)
    instruction = cls(**kwargs)
    validate_shape(instruction)
    return instruction


def _instruction_fields(
    cls: type[Instruction], plan: _FieldPlan, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The constructor arguments of `cls` from its canonical fields, field by field; refuses
    a missing, extra or malformed field."""
    kwargs: dict[str, Any] = {}
    for name, how in plan.fields:
        if name not in data:
            raise Refused(Reason.MALFORMED, f"{cls.KIND}: missing field {name!r}")
        value = data[name]
        if how == _HEX:
            if not isinstance(value, str):
                raise Refused(Reason.MALFORMED, f"{cls.KIND}.{name}: expected hex string")
            try:
                value = bytes.fromhex(value)
            except ValueError as exc:
                raise Refused(Reason.MALFORMED, f"{cls.KIND}.{name}: bad hex") from exc
        elif how == _LIST:
            if not isinstance(value, list | tuple):
                raise Refused(Reason.MALFORMED, f"{cls.KIND}.{name}: expected a list")
            value = tuple(value)
        kwargs[name] = value
    if len(data) != len(plan.fields) + 1:  # every field and "kind" are in: the rest is extra
        extra = set(data) - plan.names
        raise Refused(Reason.MALFORMED, f"{cls.KIND}: unexpected fields {sorted(extra)}")
    return kwargs


_INT_FIELDS = frozenset(
    {
        "valid_until",
        "signed_at",
        "amount",
        "pay_amount",
        "receive_amount",
        "settle_by",
        "per_transfer_limit",
        "per_day_limit",
    }
)
_AMOUNT_FIELDS = frozenset({"amount", "pay_amount", "receive_amount"})
_TIME_FIELDS = frozenset({"valid_until", "signed_at", "settle_by"})
_ID_FIELDS = frozenset(
    {
        "instruction_id",
        "sender",
        "bank",
        "participant",
        "to",
        "payee",
        "counterparty",
        "proposer",
        "pvp_id",
    }
)
_CURRENCY_FIELDS = frozenset({"currency", "pay_currency", "receive_currency"})


_ID, _CURRENCY, _AMOUNT, _INTEGER, _REFERENCE, _RATE = range(6)  # what a field is checked as


@dataclass(frozen=True, slots=True)
class _ShapePlan:
    """The fields of one instruction class that `validate_shape` checks, in declaration order,
    each with what it is checked as, and a reader of all their values at once."""

    fields: tuple[tuple[str, int], ...]
    read: Callable[[Instruction], tuple[Any, ...]]


_SHAPE_PLANS: dict[type[Instruction], _ShapePlan] = {}


def _shape_plan(cls: type[Instruction]) -> _ShapePlan:
    plan = _SHAPE_PLANS.get(cls)
    if plan is None:
        checked = []
        for f in fields(cls):
            name = f.name
            if name in _AMOUNT_FIELDS:
                checked.append((name, _AMOUNT))
            elif name in _INT_FIELDS:
                checked.append((name, _INTEGER))
            elif name in _ID_FIELDS:
                checked.append((name, _ID))
            elif name in _CURRENCY_FIELDS:
                checked.append((name, _CURRENCY))
            elif name == "reference":
                checked.append((name, _REFERENCE))
            elif name == "rate":
                checked.append((name, _RATE))
        # every kind has at least its header's four checked fields: the reader gives a tuple
        read = attrgetter(*(name for name, _ in checked))
        plan = _SHAPE_PLANS[cls] = _ShapePlan(tuple(checked), read)
    return plan


def validate_shape(instruction: Instruction) -> None:
    """Static checks of one instruction, independent of ledger state.

    Each field is first given a quick test that only a valid value passes; a value that fails
    it goes through the full checks of its field (`_check_field`), which name the refusal."""
    plan = _shape_plan(type(instruction))
    for (name, check), value in zip(plan.fields, plan.read(instruction), strict=True):
        if check == _ID:
            ok = (
                type(value) is str
                and len(value) <= MAX_ID_LENGTH
                and _ID_PATTERN.fullmatch(value) is not None
            )
        elif check == _AMOUNT:
            ok = type(value) is int and 0 < value <= INT64_MAX
        elif check == _INTEGER:
            ok = type(value) is int and 0 <= value <= INT64_MAX
        elif check == _CURRENCY:
            ok = type(value) is str and _CURRENCY_PATTERN.fullmatch(value) is not None
        elif check == _REFERENCE:
            ok = type(value) is str and len(value) <= MAX_REFERENCE_LENGTH and value.isprintable()
        else:  # _RATE; a well-formed rate has a digit other than 0 iff stripping 0s and
            # points off its ends leaves something
            ok = (
                type(value) is str
                and _RATE_PATTERN.fullmatch(value) is not None
                and value.strip("0.") != ""
            )
        if not ok:
            _check_field(instruction.KIND, name, value)
    _validate_specific(instruction)


def _check_field(kind: str, name: str, value: Any) -> None:
    """Refuse one checked field's value, precisely, if it is not valid."""
    if name in _INT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Refused(Reason.MALFORMED, f"{kind}.{name}: expected an integer")
        if name in _AMOUNT_FIELDS:
            if not 0 < value <= INT64_MAX:  # the message is only built for a refusal
                validate_amount(value, f"{kind}.{name}")
        elif value < 0 and name in _TIME_FIELDS:
            raise Refused(Reason.INVALID_TIME, f"{kind}.{name}: a time cannot be negative")
        elif not 0 <= value <= INT64_MAX:
            raise Refused(Reason.AMOUNT_OVERFLOW, f"{kind}.{name} out of range: got {value}")
    elif name in _ID_FIELDS:
        _validate_id(value, f"{kind}.{name}")
    elif name in _CURRENCY_FIELDS:
        if not isinstance(value, str) or not _CURRENCY_PATTERN.fullmatch(value):
            raise Refused(Reason.MALFORMED, f"{kind}.{name}: invalid currency {_quoted(value)}")
    elif name == "reference":
        if not isinstance(value, str):
            raise Refused(Reason.MALFORMED, f"{kind}.reference: expected text")
        if len(value) > MAX_REFERENCE_LENGTH:
            raise Refused(
                Reason.FIELD_TOO_LONG,
                f"{kind}.reference: at most {MAX_REFERENCE_LENGTH} characters, got {len(value):,}",
            )
        if not value.isprintable():
            raise Refused(Reason.MALFORMED, f"{kind}.reference: must be printable")
    elif name == "rate" and (
        not isinstance(value, str)
        or not _RATE_PATTERN.fullmatch(value)
        or not any(digit in value for digit in "123456789")
    ):
        raise Refused(Reason.MALFORMED, f"{kind}.rate: positive decimal, got {_quoted(value)}")


def _validate_id(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise Refused(Reason.MALFORMED, f"{what}: expected an identifier")
    if len(value) > MAX_ID_LENGTH:
        raise Refused(
            Reason.FIELD_TOO_LONG,
            f"{what}: at most {MAX_ID_LENGTH} characters, got {len(value):,} ({preview(value)})",
        )
    if not _ID_PATTERN.fullmatch(value):
        raise Refused(Reason.MALFORMED, f"{what}: invalid identifier {preview(value)}")


def _quoted(value: object) -> str:
    """Client input for a refusal message: a short prefix at most."""
    return preview(value) if isinstance(value, str | bytes) else type(value).__name__


def validate_amount(value: int, what: str) -> None:
    if value <= 0:
        raise Refused(Reason.NON_POSITIVE_AMOUNT, f"{what} must be positive: got {value}")
    if value > INT64_MAX:
        raise Refused(Reason.AMOUNT_OVERFLOW, f"{what} exceeds int64: got {value}")


def format_time(ms: Millis) -> str:
    """A time for a message: ISO 8601 UTC to the millisecond, and the milliseconds."""
    try:
        stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return f"{stamp.replace('+00:00', 'Z')} ({ms} ms)"


def _validate_signed_at(instruction: Instruction) -> None:
    """A body cannot be signed after its own deadlines (`valid_until`, a proposal's `settle_by`)."""
    kind, signed_at = instruction.KIND, instruction.signed_at
    if signed_at > instruction.valid_until:
        raise Refused(
            Reason.INVALID_TIME,
            f"{kind}.signed_at {format_time(signed_at)} is after its own valid_until "
            f"{format_time(instruction.valid_until)}",
        )
    if isinstance(instruction, ProposePvp) and signed_at > instruction.settle_by:
        raise Refused(
            Reason.INVALID_TIME,
            f"pvp_propose.signed_at {format_time(signed_at)} is after its own settle_by "
            f"{format_time(instruction.settle_by)}",
        )


def _validate_specific(instruction: Instruction) -> None:
    kind = instruction.KIND
    _validate_signed_at(instruction)
    if isinstance(instruction, ProposePvp | DualPvp):
        if instruction.counterparty == instruction.sender:
            raise Refused(Reason.SAME_PARTY, f"{kind}: counterparty is the sender")
        if instruction.pay_currency == instruction.receive_currency:
            raise Refused(Reason.SAME_CURRENCY, f"{kind}: both legs in the same currency")
    elif isinstance(instruction, Pay) and instruction.payee == instruction.sender:
        raise Refused(Reason.SAME_PARTY, "pay: payee is the payer")
    elif isinstance(instruction, AdmitBank):
        if not isinstance(instruction.public_key, bytes) or len(instruction.public_key) != 65:
            raise Refused(Reason.MALFORMED, "admit_bank.public_key: 65-byte SEC1 P-256 point")
    elif isinstance(instruction, SetParticipantStatus):
        if instruction.status not in (ParticipantStatus.ACTIVE, ParticipantStatus.SUSPENDED):
            raise Refused(Reason.MALFORMED, f"set_status.status: got {_quoted(instruction.status)}")
    elif isinstance(instruction, FreezeAccount):
        if not isinstance(instruction.frozen, bool):
            raise Refused(Reason.MALFORMED, "freeze_account.frozen: expected a boolean")
    elif isinstance(instruction, SetPolicy):
        for code in instruction.allowed_jurisdictions:
            if not isinstance(code, str) or not _JURISDICTION_PATTERN.fullmatch(code):
                raise Refused(Reason.MALFORMED, f"set_policy: invalid jurisdiction {_quoted(code)}")
    elif isinstance(instruction, AcceptPvp) and not (
        isinstance(instruction.terms_hash, str)
        and re.fullmatch(r"[0-9a-f]{64}", instruction.terms_hash)
    ):
        raise Refused(Reason.MALFORMED, "pvp_accept.terms_hash: 64 lower-case hex digits")


# ---------------------------------------------------------------------------- signatures


@dataclass(frozen=True, slots=True)
class Signature:
    """A party's signature over the body, or (when `endorses` is set) a central bank's
    endorsement of that party's signed leg.

    A central bank endorses the legs it forwards in batches: it signs once the Merkle root of
    the batch's legs (`endorsement_root_message`), and each endorsement carries that signature
    with its leg's place in the batch: `index` among `size` leaves and the audit `path`
    (sibling hashes, bottom-up), from which anyone recomputes the root (a lone leg is a batch
    of one: index 0, size 1, empty path). A party signature has size 0 and no path."""

    signer: ParticipantId
    value: bytes
    endorses: ParticipantId = ""
    index: int = 0
    size: int = 0
    path: tuple[bytes, ...] = ()


INSTRUCTION_DOMAIN = b"cbdc-bridge/v1/instruction\x00"
ENDORSEMENT_DOMAIN = b"cbdc-bridge/v1/endorsement-root\x00"
ATTESTATION_DOMAIN = b"cbdc-bridge/v1/attestation\x00"
QUERY_DOMAIN = b"cbdc-bridge/v1/query\x00"
MAX_ENDORSEMENT_BATCH = 0xFFFFFFFF  # `size` is signed as 4 bytes


def party_message(body_bytes: bytes) -> bytes:
    """What a party signs: domain tag, then the canonical body."""
    return INSTRUCTION_DOMAIN + body_bytes


def endorsed_leg(body_bytes: bytes, party_signature: bytes) -> bytes:
    """One leg a central bank endorses, as a Merkle leaf's data: the length of the bank's
    signature (2 bytes, big-endian), the signature, then SHA-256 of the canonical body."""
    return _endorsed_leg(sha256(body_bytes).digest(), party_signature)


def _endorsed_leg(body_hash: bytes, party_signature: bytes) -> bytes:
    return len(party_signature).to_bytes(2, "big") + party_signature + body_hash


def endorsement_leaf(body_bytes: bytes, party_signature: bytes) -> bytes:
    """The leg's leaf hash in its batch's tree (RFC 6962: SHA-256 of 0x00 and the data)."""
    return leaf_hash(endorsed_leg(body_bytes, party_signature))


def endorsement_root_message(root: bytes, size: int) -> bytes:
    """What a central bank signs to endorse a batch of legs: domain tag, the number of legs
    (4 bytes, big-endian) and the Merkle root of their leaves."""
    return ENDORSEMENT_DOMAIN + size.to_bytes(4, "big") + root


def endorsement_message(
    body_bytes: bytes, party_signature: bytes, endorsement: Signature
) -> bytes | None:
    """The root message `endorsement` must be a signature of, recomputed from the leg and the
    endorsement's place in its batch; None when the place is impossible (index outside the
    batch, a path of the wrong length): such an endorsement does not verify."""
    return _endorsement_message(sha256(body_bytes).digest(), party_signature, endorsement)


def envelope_endorsement_message(
    envelope: Envelope, party_signature: bytes, endorsement: Signature
) -> bytes | None:
    """`endorsement_message` of the envelope's body, from its body hash (worked out once per
    envelope, however many legs and checks use it)."""
    return _endorsement_message(envelope.body_hash(), party_signature, endorsement)


def _endorsement_message(
    body_hash: bytes, party_signature: bytes, endorsement: Signature
) -> bytes | None:
    size = endorsement.size
    if not 1 <= size <= MAX_ENDORSEMENT_BATCH:
        return None
    root = root_from_path(
        leaf_hash(_endorsed_leg(body_hash, party_signature)),
        endorsement.index,
        size,
        endorsement.path,
    )
    return None if root is None else endorsement_root_message(root, size)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed instruction as it travels and as it is logged.

    `shape_checked` is True only when the decoder that built this envelope ran
    `validate_shape` on this very body (an immutable value, so it stays valid): the ledger
    then does not check the shape a second time. Envelopes built in code leave it False."""

    body: Instruction
    signatures: tuple[Signature, ...]
    body_bytes: bytes = field(default=b"", compare=False)
    shape_checked: bool = field(default=False, compare=False, repr=False, kw_only=True)
    _body_hash: bytes = field(default=b"", init=False, compare=False, repr=False)

    @classmethod
    def of(cls, body: Instruction, signatures: tuple[Signature, ...] = ()) -> Envelope:
        return cls(body, signatures, body.canonical_bytes())

    def body_hash(self) -> bytes:
        """SHA-256 of the body bytes, worked out on the first call and kept."""
        digest = self._body_hash
        if not digest:
            digest = sha256(self.body_bytes).digest()
            object.__setattr__(self, "_body_hash", digest)  # a cache of immutable bytes
        return digest

    def with_signatures(self, signatures: tuple[Signature, ...]) -> Envelope:
        """The same body (its bytes, shape check and hash) with `signatures` instead."""
        envelope = Envelope(
            self.body, signatures, self.body_bytes, shape_checked=self.shape_checked
        )
        if self._body_hash:
            object.__setattr__(envelope, "_body_hash", self._body_hash)
        return envelope

    def with_signature(self, signature: Signature) -> Envelope:
        """The same body with `signature` added after the others."""
        return self.with_signatures((*self.signatures, signature))

    def party_signature(self, party: ParticipantId) -> Signature | None:
        for sig in self.signatures:
            if sig.signer == party and not sig.endorses:
                return sig
        return None

    def endorsement(self, party: ParticipantId) -> Signature | None:
        for sig in self.signatures:
            if sig.endorses == party:
                return sig
        return None

    def signatures_fields(self) -> list[list[Any]]:
        return [_signature_fields(s) for s in self.signatures]

    @classmethod
    def from_fields(cls, body: Mapping[str, Any], signatures: list[list[Any]]) -> Envelope:
        instruction = instruction_from_fields(body)  # shape validated
        if not isinstance(signatures, list):
            raise Refused(Reason.MALFORMED, "malformed signature list: expected a list")
        if type(body) is dict and not _field_plan(type(instruction)).hex:
            # the instruction holds the very values of `body` (tuples rebuilt from its lists):
            # `body` encodes exactly as the instruction's fields do, without rebuilding them
            body_bytes = canonical_json(body)
        else:  # bytes fields: their hex is only canonical as the instruction writes it
            body_bytes = instruction.canonical_bytes()
        return cls(instruction, _signatures_from_fields(signatures), body_bytes, shape_checked=True)


def _signature_fields(s: Signature) -> list[Any]:
    """A party signature: [signer, "", hex]; an endorsement: [signer, endorses, hex, index,
    size, [path hex, ...]]."""
    if not s.endorses:
        return [s.signer, s.endorses, s.value.hex()]
    return [s.signer, s.endorses, s.value.hex(), s.index, s.size, [h.hex() for h in s.path]]


def _signatures_from_fields(signatures: list[Any]) -> tuple[Signature, ...]:
    """`tuple(map(_signature_from_fields, signatures))`, with a quick way for the well-typed
    fields of the log: a signature whose fields have exactly the types it needs, whose hex
    decodes, is built at once; anything else (or anything that fails) goes through
    `_signature_from_fields`, which builds the same or names the refusal."""
    out: list[Signature] = []
    fromhex = bytes.fromhex
    for fields_ in signatures:
        if type(fields_) is list:
            try:
                if len(fields_) == 3:
                    signer, endorses, value = fields_
                    if type(signer) is str and endorses == "" and type(endorses) is str:
                        out.append(Signature(signer, fromhex(value)))
                        continue
                elif len(fields_) == 6:
                    signer, endorses, value, index, size, path = fields_
                    if (
                        type(signer) is str
                        and type(endorses) is str
                        and endorses
                        and type(index) is int
                        and type(size) is int
                        and type(path) is list
                    ):
                        value = fromhex(value)
                        out.append(
                            Signature(
                                signer, value, endorses, index, size, tuple(map(fromhex, path))
                            )
                        )
                        continue
            except (TypeError, ValueError):
                pass  # the full decoding below refuses it, and says why
        out.append(_signature_from_fields(fields_))
    return tuple(out)


def _signature_from_fields(fields_: Any) -> Signature:
    try:
        if not isinstance(fields_, list) or len(fields_) not in (3, 6):
            raise ValueError("a signature is 3 fields, an endorsement 6")
        if len(fields_) == 3:
            signer, endorses, value = fields_
        else:
            signer, endorses, value, index, size, path = fields_
        if not isinstance(signer, str) or not isinstance(endorses, str):
            raise Refused(Reason.MALFORMED, "signers must be strings")
        if not isinstance(value, str):
            raise ValueError("a signature is hex")
        if len(fields_) == 3:
            if endorses:
                raise ValueError("an endorsement carries its place in its batch")
            return Signature(signer, bytes.fromhex(value))
        if not endorses:
            raise ValueError("only an endorsement carries a place in a batch")
        # integers, not booleans (bool is an int subclass, and nothing subclasses bool)
        if type(index) is bool or type(size) is bool:
            raise ValueError("index and size are integers")
        if not (isinstance(index, int) and isinstance(size, int)):
            raise ValueError("index and size are integers")
        if not isinstance(path, list):
            raise ValueError("a path is a list of hex hashes")
        signature = bytes.fromhex(value)
        try:
            hashes = tuple(map(bytes.fromhex, path))
        except TypeError:  # fromhex takes text only
            raise ValueError("a path is a list of hex hashes") from None
        return Signature(signer, signature, endorses, index, size, hashes)
    except (TypeError, ValueError) as exc:
        raise Refused(Reason.MALFORMED, f"malformed signature list: {exc}") from exc


# ---------------------------------------------------------------------------- log records


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome the ledger recorded for one instruction id."""

    sender: ParticipantId
    instruction_id: InstructionId
    body_hash: bytes
    outcome: Outcome
    seq: int
    duplicate: bool = False


# characters JSON (ensure_ascii) writes as they are: printable ASCII but the quote and backslash
_JSON_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def _signatures_json(envelope: Envelope) -> bytes:
    """`json.dumps(envelope.signatures_fields(), separators=(",", ":"))`, written directly
    when no signer name needs escaping (participant ids and hex never do)."""
    signatures = envelope.signatures
    try:  # one check of every name at once; a name that is no string fails the join
        plain = _JSON_PLAIN.fullmatch(
            "".join([n for s in signatures for n in (s.signer, s.endorses)])
        )
    except TypeError:
        plain = None
    if plain is None:
        return json.dumps(envelope.signatures_fields(), separators=(",", ":")).encode()
    parts = [_signature_json(s) for s in signatures]
    return f"[{','.join(parts)}]".encode()


def _signature_json(s: Signature) -> str:
    if not s.endorses:
        return f'["{s.signer}","","{s.value.hex()}"]'
    path = ",".join([f'"{h.hex()}"' for h in s.path])
    return f'["{s.signer}","{s.endorses}","{s.value.hex()}",{s.index},{s.size},[{path}]]'


_OUTCOME_BYTES = {outcome: outcome.value.encode() for outcome in Outcome}


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted instruction and its outcome, at its place in the log."""

    seq: int
    time: Millis
    envelope: Envelope
    outcome: Outcome

    def canonical_bytes(self) -> bytes:
        # sorted keys: body, outcome, seq, sigs, time; the body is already canonical
        return b"".join(
            (
                b'{"body":',
                self.envelope.body_bytes,
                b',"outcome":"',
                _OUTCOME_BYTES[self.outcome],
                b'","seq":',
                str(self.seq).encode(),
                b',"sigs":',
                _signatures_json(self.envelope),
                b',"time":',
                str(self.time).encode(),
                b"}",
            )
        )

    @classmethod
    def from_canonical_bytes(cls, data: bytes, known: KnownBodies | None = None) -> Entry:
        """Decode an entry from its canonical bytes, or refuse them (Refused, MALFORMED).

        With `known`, an entry whose body bytes are exactly those of an envelope decoded before
        takes that envelope's body instead of decoding it again (the quick way, `_with_known_body`);
        the rest is decoded and the whole entry re-encoded and compared with `data` as always.
        Whatever the quick way does not accept goes the full way below, which gives the same
        entry or names the refusal: the answer is the same with or without `known`."""
        if known is not None:
            entry = cls._with_known_body(data, known)
            if entry is not None:
                return entry
        try:
            raw = json.loads(data)
            envelope = Envelope.from_fields(raw["body"], raw["sigs"])
            seq, time = raw["seq"], raw["time"]
            if type(seq) is not int or type(time) is not int:  # not 1.0, 1E400 (inf) or true
                raise Refused(Reason.MALFORMED, "an entry's seq and time are integers")
            entry = cls(seq, time, envelope, Outcome(raw["outcome"]))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
            # whatever the bytes are (JSON nested too deep included), the answer is a refusal,
            # never an exception of the parser
            raise Refused(Reason.MALFORMED, f"not an entry: {exc!r:.200}") from exc
        if entry.canonical_bytes() != data:
            raise Refused(Reason.MALFORMED, f"entry {entry.seq}: not in canonical encoding")
        return entry

    @classmethod
    def _with_known_body(cls, data: bytes, known: KnownBodies) -> Entry | None:
        """The entry, when its body bytes are a known envelope's and the whole of `data` is
        exactly its canonical encoding; None otherwise (the full decoding then decides)."""
        if not known:  # nothing held: not worth looking for the body
            known.misses += 1
            return None
        if not data.startswith(_ENTRY_BODY):
            return None
        # a JSON string cannot hold an unescaped quote, so the first `,"outcome":"` is the
        # entry's own key unless the body has one of its own: then the bytes before it are no
        # whole body and match no known one
        end = data.find(_ENTRY_OUTCOME, len(_ENTRY_BODY))
        if end < 0:
            return None
        envelope = known.take(data[len(_ENTRY_BODY) : end])
        if envelope is None:
            return None
        entry = cls._proven(data, end, envelope)
        if entry is None:
            known.misses += 1  # decoded the full way after all
        else:
            known.hits += 1
        return entry

    @classmethod
    def _proven(cls, data: bytes, end: int, envelope: Envelope) -> Entry | None:
        """The entry of `data` with `envelope`'s body and the rest decoded from `data[end:]`,
        if the whole of `data` is exactly its canonical encoding; None otherwise."""
        try:
            raw = json.loads(b"{" + data[end + 1 :])
            seq, time, signatures = raw["seq"], raw["time"], raw["sigs"]
            if type(seq) is not int or type(time) is not int or type(signatures) is not list:
                return None
            entry = cls(
                seq,
                time,
                envelope.with_signatures(_signatures_from_fields(signatures)),
                Outcome(raw["outcome"]),
            )
        except (
            Refused,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            RecursionError,
        ):
            return None
        if entry.canonical_bytes() != data:  # the proof: byte for byte, as the full way
            return None
        return entry


_ENTRY_BODY = b'{"body":'
_ENTRY_OUTCOME = b',"outcome":"'
KNOWN_BODIES = 4096  # envelopes a node keeps for its replay (see `KnownBodies`)


class KnownBodies:
    """The envelopes a node decoded at its edge (its banks' instructions, the dual PvPs it
    endorsed for a peer), by their canonical body bytes, so that replaying their entries takes
    the decoded body instead of decoding it again (`Entry.from_canonical_bytes`).

    Bounded: an envelope is dropped when an entry takes it, and the oldest is dropped beyond
    `bound` (instructions refused before the log, or replayed before they were remembered).
    Only envelopes whose body was decoded and shape-checked from exactly their body bytes are
    kept; nothing here is trusted: an entry is still proven to be exactly its canonical bytes."""

    __slots__ = ("_bound", "_envelopes", "hits", "misses")

    def __init__(self, bound: int = KNOWN_BODIES) -> None:
        self._bound = bound
        self._envelopes: OrderedDict[bytes, Envelope] = OrderedDict()
        self.hits = 0  # entries that took a known body (and were proven with it)
        self.misses = 0  # entries whose body was not known (decoded the full way)

    def __len__(self) -> int:
        return len(self._envelopes)

    def remember(self, envelope: Envelope) -> None:
        """Keep a decoded envelope (one its decoder shape-checked; others are ignored)."""
        if not envelope.shape_checked or not envelope.body_bytes:
            return
        envelopes = self._envelopes
        envelopes[envelope.body_bytes] = envelope
        envelopes.move_to_end(envelope.body_bytes)  # seen again (a retry): the newest now
        if len(envelopes) > self._bound:
            envelopes.popitem(last=False)

    def take(self, body_bytes: bytes) -> Envelope | None:
        """The envelope decoded from exactly `body_bytes`, dropped from here; None if none
        (counted as a miss; a hit is counted by the decoding once the entry is proven)."""
        envelope = self._envelopes.pop(body_bytes, None)
        if envelope is None:
            self.misses += 1
        return envelope
