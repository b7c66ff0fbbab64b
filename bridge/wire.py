"""Conversions between the domain model and the wire messages of `protos/bridge/v1`.

Code works with the domain (`bridge.domain`, `bridge.log.blocks`); the generated messages
(`bridge._proto`) are only what travels, and they are converted here, at the edge. Whatever
comes off the wire is validated as the domain validates it, so a decoded `Envelope` carries the
canonical body bytes its signatures cover. A message that cannot be a domain value is refused
with `Reason.MALFORMED`, or with the domain's more precise reason (`NON_POSITIVE_AMOUNT`,
`SAME_PARTY`, ...). Before any of this, every request a node receives has decoded and passed
the field bounds of `bridge.bounds` (lengths, character sets, page sizes, times; checked by
`bridge.node.request_guard` on every server); an instruction without a positive `valid_until`,
`signed_at` (or `settle_by`) is refused here with `INVALID_TIME`.

Instruction bodies convert by field name: each body message has exactly the fields its domain
class adds to the common header (instruction_id, sender, valid_until, signed_at), and the
members of the `Instruction.body` oneof are named after the domain kinds. That correspondence
is checked when this module is imported, so the proto and the domain cannot silently drift
apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as pb
from bridge.core.ledger import PvpState
from bridge.domain import (
    INSTRUCTION_TYPES,
    QUERY_DOMAIN,
    Currency,
    CurrencyCode,
    Entry,
    Envelope,
    Genesis,
    GenesisBank,
    Instruction,
    Leg,
    Outcome,
    Participant,
    ParticipantId,
    ParticipantKind,
    ParticipantStatus,
    Policy,
    Receipt,
    Signature,
    canonical_json,
    validate_shape,
)
from bridge.errors import STATUS_OF_REASON, Reason, Refused
from bridge.log.blocks import Attestation, BlockHeader, SealedBlock
from bridge.metrics import stage

__all__ = [
    "ReceivedBlock",
    "account_to_proto",
    "attestation_from_proto",
    "attestation_to_proto",
    "block_from_proto",
    "block_to_proto",
    "currency_from_proto",
    "currency_to_proto",
    "entry_bytes_to_proto",
    "entry_from_proto",
    "entry_to_proto",
    "envelope_from_proto",
    "envelope_to_proto",
    "error_detail_to_proto",
    "genesis_from_proto",
    "genesis_to_proto",
    "header_from_proto",
    "header_to_proto",
    "instruction_from_proto",
    "instruction_status_to_proto",
    "instruction_to_proto",
    "leg_from_proto",
    "leg_to_proto",
    "outcome_from_proto",
    "outcome_to_proto",
    "participant_from_proto",
    "participant_to_proto",
    "policy_from_proto",
    "policy_to_proto",
    "pvp_to_proto",
    "query_message",
    "receipt_from_proto",
    "receipt_to_proto",
    "refusal_from_proto",
    "refusal_to_proto",
    "signature_from_proto",
    "signature_to_proto",
    "submit_response_to_proto",
    "submit_result_from_proto",
    "supply_to_proto",
]

HASH_LENGTH = 32

# ---------------------------------------------------------------------------- enums

_OUTCOME_TO_PROTO = {o: pb.Outcome.Value(f"OUTCOME_{o.name}") for o in Outcome}
_OUTCOME_FROM_PROTO = {v: o for o, v in _OUTCOME_TO_PROTO.items()}
_STATUS_TO_PROTO = {
    s: pb.ParticipantStatus.Value(f"PARTICIPANT_STATUS_{s.name}") for s in ParticipantStatus
}
_STATUS_FROM_PROTO = {v: s for s, v in _STATUS_TO_PROTO.items()}
_KIND_TO_PROTO = {
    k: pb.ParticipantKind.Value(f"PARTICIPANT_KIND_{k.name}") for k in ParticipantKind
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}

_DECODE = stage("decode")
_ENCODE = stage("encode")


def outcome_to_proto(outcome: Outcome) -> pb.Outcome.ValueType:
    return _OUTCOME_TO_PROTO[outcome]


def outcome_from_proto(value: pb.Outcome.ValueType) -> Outcome:
    outcome = _OUTCOME_FROM_PROTO.get(value)
    if outcome is None:
        raise Refused(Reason.MALFORMED, f"unknown outcome: {value}")
    return outcome


def _status_from_proto(value: pb.ParticipantStatus.ValueType) -> ParticipantStatus:
    status = _STATUS_FROM_PROTO.get(value)
    if status is None:
        raise Refused(Reason.MALFORMED, f"unknown participant status: {value}")
    return status


def _status_value_from_proto(value: pb.ParticipantStatus.ValueType) -> str:
    return _status_from_proto(value).value


def _status_to_proto(value: str) -> pb.ParticipantStatus.ValueType:
    return _STATUS_TO_PROTO[ParticipantStatus(value)]  # ValueError for an unknown status


def _kind_from_proto(value: pb.ParticipantKind.ValueType) -> ParticipantKind:
    kind = _KIND_FROM_PROTO.get(value)
    if kind is None:
        raise Refused(Reason.MALFORMED, f"unknown participant kind: {value}")
    return kind


# ---------------------------------------------------------------------------- instructions

# the header fields a body class takes by position; `signed_at`, the header's keyword-only
# field, is read and passed on its own
_HEADER_FIELDS = tuple(f.name for f in fields(Instruction) if not f.kw_only)
_KEYWORD_HEADER_FIELDS = tuple(f.name for f in fields(Instruction) if f.kw_only)


@dataclass(frozen=True, slots=True)
class _BodyCodec:
    """How one instruction kind's body fields move between its domain class and message."""

    cls: type[Instruction]
    names: tuple[str, ...]  # body fields in domain order (after the header)
    repeated: frozenset[str]
    enums: frozenset[str]  # ParticipantStatus fields: enum on the wire, str in the domain
    # reads header and body fields off an Instruction message in one call, in domain order
    read: Callable[[pb.Instruction], tuple[Any, ...]] = field(init=False, repr=False)
    fixups: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kind = self.cls.KIND
        paths = (*_HEADER_FIELDS, *(f"{kind}.{name}" for name in self.names))
        fixups: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(self.names, start=len(_HEADER_FIELDS)):
            if name in self.repeated:
                fixups.append((index, tuple))
            elif name in self.enums:
                fixups.append((index, _status_value_from_proto))
        object.__setattr__(self, "read", attrgetter(*paths))
        object.__setattr__(self, "fixups", tuple(fixups))


def _body_codecs() -> dict[str, _BodyCodec]:
    """Pair each domain kind with its body message, refusing any difference in fields."""
    members = {f.name: f for f in pb.Instruction.DESCRIPTOR.oneofs_by_name["body"].fields}
    if set(members) != set(INSTRUCTION_TYPES):
        raise RuntimeError(
            f"Instruction.body members {sorted(members)} differ from the domain kinds "
            f"{sorted(INSTRUCTION_TYPES)}: regenerate bridge/_proto or fix protos/"
        )
    header = {f.name for f in pb.Instruction.DESCRIPTOR.fields if f.containing_oneof is None}
    if header != {*_HEADER_FIELDS, *_KEYWORD_HEADER_FIELDS}:
        raise RuntimeError(
            f"Instruction header fields {sorted(header)} differ from the domain's "
            f"{sorted({*_HEADER_FIELDS, *_KEYWORD_HEADER_FIELDS})}"
        )
    codecs = {}
    for kind, cls in INSTRUCTION_TYPES.items():
        message = members[kind].message_type
        if message is None:
            raise RuntimeError(f"Instruction.{kind} is not a message")
        header = {*_HEADER_FIELDS, *_KEYWORD_HEADER_FIELDS}
        names = tuple(f.name for f in fields(cls) if f.name not in header)
        wire = {f.name: f for f in message.fields}
        if set(names) != set(wire):
            raise RuntimeError(
                f"{message.full_name} fields {sorted(wire)} differ from {kind} {sorted(names)}"
            )
        enums = {name: f.enum_type.full_name for name, f in wire.items() if f.enum_type}
        if set(enums.values()) - {"bridge.v1.ParticipantStatus"}:
            raise RuntimeError(f"{message.full_name}: only ParticipantStatus enums are supported")
        repeated = {name for name, f in wire.items() if f.is_repeated}
        codecs[kind] = _BodyCodec(cls, names, frozenset(repeated), frozenset(enums))
    return codecs


_CODECS = _body_codecs()


def instruction_to_proto(body: Instruction) -> pb.Instruction:
    """Encode an instruction; refuses one no wire message can carry (e.g. amounts past int64)."""
    msg = pb.Instruction()
    _fill_instruction(msg, body)
    return msg


def _fill_instruction(msg: pb.Instruction, body: Instruction) -> None:
    """Set an empty `msg`'s fields to `body`'s, in place (no message built and then copied)."""
    codec = _CODECS.get(body.KIND)
    if codec is None or type(body) is not codec.cls:
        raise Refused(Reason.MALFORMED, f"unknown instruction kind: {body.KIND!r}")
    try:
        msg.instruction_id = body.instruction_id
        msg.sender = body.sender
        msg.valid_until = body.valid_until
        msg.signed_at = body.signed_at
        wire_body = getattr(msg, body.KIND)
        wire_body.SetInParent()
        for name in codec.names:
            value = getattr(body, name)
            if name in codec.repeated:
                getattr(wire_body, name).extend(value)
            elif name in codec.enums:
                setattr(wire_body, name, _status_to_proto(value))
            else:
                setattr(wire_body, name, value)
    except (TypeError, ValueError) as exc:
        validate_shape(body)  # the domain's precise reason, e.g. AMOUNT_OVERFLOW
        raise Refused(Reason.MALFORMED, f"{body.KIND}: cannot be encoded: {exc}") from exc


def instruction_from_proto(msg: pb.Instruction) -> Instruction:
    """Decode and validate an instruction, or raise `Refused`."""
    kind = msg.WhichOneof("body")
    if kind is None:
        raise Refused(Reason.MALFORMED, "instruction has no body (missing or unknown kind)")
    codec = _CODECS[kind]
    if msg.valid_until <= 0:  # proto3 sends 0 for "not set": every instruction has a deadline
        raise Refused(Reason.INVALID_TIME, f"{kind}.valid_until must be a positive time")
    if kind == "pvp_propose" and msg.pvp_propose.settle_by <= 0:
        raise Refused(Reason.INVALID_TIME, "pvp_propose.settle_by must be a positive time")
    signed_at = msg.signed_at
    if signed_at <= 0:  # every instruction says when it was signed
        raise Refused(
            Reason.INVALID_TIME,
            f"{kind}.signed_at must be a positive time: when the sender signed it, "
            "in UTC milliseconds since the epoch",
        )
    values = codec.read(msg)
    if codec.fixups:
        values_list = list(values)
        for index, convert in codec.fixups:
            values_list[index] = convert(values_list[index])
        values = tuple(values_list)
    instruction = codec.cls(*values, signed_at=signed_at)
    validate_shape(instruction)
    return instruction


def signature_to_proto(signature: Signature) -> pb.Signature:
    if not signature.endorses:
        return pb.Signature(signer=signature.signer, value=signature.value)
    return pb.Signature(
        signer=signature.signer,
        value=signature.value,
        endorses=signature.endorses,
        batch_index=signature.index,
        batch_size=signature.size,
        batch_path=signature.path,
    )


_read_signature: Callable[[pb.Signature], tuple[str, bytes, str, int, int, Any]] = attrgetter(
    "signer", "value", "endorses", "batch_index", "batch_size", "batch_path"
)


def signature_from_proto(msg: pb.Signature) -> Signature:
    signer, value, endorses, index, size, path = _read_signature(msg)
    if not signer or not value:
        raise Refused(Reason.MALFORMED, "signature: signer and value are required")
    if not endorses:
        if size or index or path:
            raise Refused(Reason.MALFORMED, "signature: only an endorsement has a batch place")
        return Signature(signer, value)
    return Signature(signer, value, endorses, index, size, tuple(path))


def envelope_to_proto(envelope: Envelope) -> pb.SignedInstruction:
    """Encode a signed instruction, built in place: a message given to a constructor or
    appended to a list is copied, which took about half the encoding's machine instructions."""
    with _ENCODE.timed():
        msg = pb.SignedInstruction()
        _fill_instruction(msg.instruction, envelope.body)
        add = msg.signatures.add
        for s in envelope.signatures:
            if not s.endorses:
                add(signer=s.signer, value=s.value)
            else:
                add(
                    signer=s.signer,
                    value=s.value,
                    endorses=s.endorses,
                    batch_index=s.index,
                    batch_size=s.size,
                    batch_path=s.path,
                )
        return msg


def envelope_from_proto(msg: pb.SignedInstruction) -> Envelope:
    """Decode a signed instruction; its `body_bytes` are the canonical encoding of the body."""
    if not msg.HasField("instruction"):
        raise Refused(Reason.MALFORMED, "signed instruction has no instruction")
    with _DECODE.timed():
        body = instruction_from_proto(msg.instruction)  # shape validated
        signatures = tuple(signature_from_proto(s) for s in msg.signatures)
        return Envelope(body, signatures, body.canonical_bytes(), shape_checked=True)


# ---------------------------------------------------------------------------- receipts and entries


def receipt_to_proto(receipt: Receipt) -> pb.Receipt:
    return pb.Receipt(
        sender=receipt.sender,
        instruction_id=receipt.instruction_id,
        body_hash=receipt.body_hash,
        outcome=_OUTCOME_TO_PROTO[receipt.outcome],
        seq=receipt.seq,
        duplicate=receipt.duplicate,
    )


def receipt_from_proto(msg: pb.Receipt) -> Receipt:
    if not msg.sender or not msg.instruction_id:
        raise Refused(Reason.MALFORMED, "receipt: sender and instruction_id are required")
    _require_hash(msg.body_hash, "receipt.body_hash")
    _require_positive(msg.seq, "receipt.seq")
    outcome = outcome_from_proto(msg.outcome)
    return Receipt(msg.sender, msg.instruction_id, msg.body_hash, outcome, msg.seq, msg.duplicate)


def instruction_status_to_proto(
    receipt: Receipt, *, block_height: int = 0, final: bool = False
) -> pb.InstructionStatus:
    """A receipt with the block holding its entry (0: not sealed yet) and that block's finality."""
    return pb.InstructionStatus(
        receipt=receipt_to_proto(receipt), block_height=block_height, final=final
    )


def entry_to_proto(entry: Entry, canonical: bytes | None = None) -> pb.SettlementEntry:
    """Encode an entry; pass its canonical bytes when already at hand (a sealed block has them)."""
    return pb.SettlementEntry(
        seq=entry.seq,
        time=entry.time,
        signed=envelope_to_proto(entry.envelope),
        outcome=_OUTCOME_TO_PROTO[entry.outcome],
        canonical=entry.canonical_bytes() if canonical is None else canonical,
    )


def entry_from_proto(msg: pb.SettlementEntry) -> Entry:
    """Decode an entry; refuses one whose `canonical` bytes disagree with its fields."""
    return _entry_with_bytes(msg)[0]


def entry_bytes_to_proto(seq: int, canonical: bytes) -> pb.SettlementEntry:
    """Encode an entry stored as its canonical bytes (as the settlement log keeps it)."""
    entry = Entry.from_canonical_bytes(canonical)
    if entry.seq != seq:
        raise Refused(Reason.MALFORMED, f"entry stored at seq {seq} says seq {entry.seq}")
    return entry_to_proto(entry, canonical)


def _entry_with_bytes(msg: pb.SettlementEntry) -> tuple[Entry, bytes]:
    if not msg.HasField("signed") and msg.canonical:
        # the compact form of block streams: the canonical bytes are the entry
        canonical = bytes(msg.canonical)
        try:
            entry = Entry.from_canonical_bytes(canonical)
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(Reason.MALFORMED, f"entry {msg.seq}: unreadable canonical bytes") from exc
        if entry.seq != msg.seq:
            raise Refused(Reason.MALFORMED, f"entry sent as seq {msg.seq} says seq {entry.seq}")
        return entry, canonical
    if not msg.HasField("signed"):
        raise Refused(Reason.MALFORMED, f"entry {msg.seq}: no signed instruction")
    _require_positive(msg.seq, "entry.seq")
    if msg.time < 0:
        raise Refused(Reason.MALFORMED, f"entry {msg.seq}: negative time {msg.time}")
    entry = Entry(
        msg.seq, msg.time, envelope_from_proto(msg.signed), outcome_from_proto(msg.outcome)
    )
    canonical = entry.canonical_bytes()
    if msg.canonical and msg.canonical != canonical:
        raise Refused(Reason.MALFORMED, f"entry {msg.seq}: canonical bytes do not match its fields")
    return entry, canonical


# ---------------------------------------------------------------------------- blocks


def header_to_proto(header: BlockHeader) -> pb.BlockHeader:
    return pb.BlockHeader(
        height=header.height,
        prev_hash=header.prev_hash,
        merkle_root=header.merkle_root,
        time=header.time,
        first_seq=header.first_seq,
        entry_count=header.entry_count,
    )


def header_from_proto(msg: pb.BlockHeader) -> BlockHeader:
    _require_positive(msg.height, "block.height")
    _require_positive(msg.first_seq, "block.first_seq")
    _require_positive(msg.entry_count, "block.entry_count")
    _require_hash(msg.prev_hash, "block.prev_hash")
    _require_hash(msg.merkle_root, "block.merkle_root")
    if msg.time < 0:
        raise Refused(Reason.MALFORMED, f"block {msg.height}: negative time {msg.time}")
    return BlockHeader(
        msg.height, msg.prev_hash, msg.merkle_root, msg.time, msg.first_seq, msg.entry_count
    )


def attestation_to_proto(attestation: Attestation) -> pb.Attestation:
    return pb.Attestation(
        height=attestation.height,
        block_hash=attestation.block_hash,
        central_bank=attestation.central_bank,
        signature=attestation.signature,
    )


def attestation_from_proto(msg: pb.Attestation) -> Attestation:
    _require_positive(msg.height, "attestation.height")
    _require_hash(msg.block_hash, "attestation.block_hash")
    if not msg.central_bank or not msg.signature:
        raise Refused(Reason.MALFORMED, "attestation: central_bank and signature are required")
    return Attestation(msg.height, msg.block_hash, msg.central_bank, msg.signature)


@dataclass(frozen=True, slots=True)
class ReceivedBlock:
    """A block as served by the bridge: sealed entries, attestations so far, finality flag.

    Decoding checks each entry against its canonical bytes, not the block's integrity (hash
    chain, Merkle root, attestation signatures): that is the log verifier's job.
    """

    block: SealedBlock
    attestations: tuple[Attestation, ...]
    final: bool


def block_to_proto(
    block: SealedBlock, attestations: Iterable[Attestation] = (), *, final: bool = False
) -> pb.Block:
    return pb.Block(
        header=header_to_proto(block.header),
        entries=[
            entry_to_proto(e, b) for e, b in zip(block.entries, block.entry_bytes, strict=True)
        ],
        attestations=[attestation_to_proto(a) for a in attestations],
        final=final,
    )


def block_from_proto(msg: pb.Block) -> ReceivedBlock:
    if not msg.HasField("header"):
        raise Refused(Reason.MALFORMED, "block has no header")
    header = header_from_proto(msg.header)
    decoded = [_entry_with_bytes(e) for e in msg.entries]
    block = SealedBlock(header, tuple(e for e, _ in decoded), tuple(b for _, b in decoded))
    attestations = tuple(attestation_from_proto(a) for a in msg.attestations)
    return ReceivedBlock(block, attestations, msg.final)


# ---------------------------------------------------------------------------- reference data


def currency_to_proto(currency: Currency) -> pb.Currency:
    return pb.Currency(code=currency.code, exponent=currency.exponent, issuer=currency.issuer)


def currency_from_proto(msg: pb.Currency) -> Currency:
    return Currency(msg.code, msg.exponent, msg.issuer)


def participant_to_proto(participant: Participant) -> pb.Participant:
    return pb.Participant(
        id=participant.id,
        kind=_KIND_TO_PROTO[participant.kind],
        jurisdiction=participant.jurisdiction,
        public_key=participant.public_key,
        home_central_bank=participant.home_central_bank,
        status=_STATUS_TO_PROTO[participant.status],
    )


def participant_from_proto(msg: pb.Participant) -> Participant:
    return Participant(
        msg.id,
        _kind_from_proto(msg.kind),
        msg.jurisdiction,
        msg.public_key,
        msg.home_central_bank,
        _status_from_proto(msg.status),
    )


def policy_to_proto(policy: Policy) -> pb.Policy:
    return pb.Policy(
        per_transfer_limit=policy.per_transfer_limit,
        per_day_limit=policy.per_day_limit,
        allowed_jurisdictions=policy.allowed_jurisdictions,
    )


def policy_from_proto(msg: pb.Policy) -> Policy:
    return Policy(msg.per_transfer_limit, msg.per_day_limit, tuple(msg.allowed_jurisdictions))


def leg_to_proto(leg: Leg) -> pb.Leg:
    return pb.Leg(payer=leg.payer, payee=leg.payee, currency=leg.currency, amount=leg.amount)


def leg_from_proto(msg: pb.Leg) -> Leg:
    return Leg(msg.payer, msg.payee, msg.currency, msg.amount)


def account_to_proto(
    participant: ParticipantId,
    currency: CurrencyCode,
    available: int,
    held: int,
    frozen: bool = False,
) -> pb.Account:
    """One account, as the stores list them: (participant, currency, available, held, frozen)."""
    return pb.Account(
        participant=participant, currency=currency, available=available, held=held, frozen=frozen
    )


def supply_to_proto(currency: CurrencyCode, supply: tuple[int, int]) -> pb.CurrencySupply:
    """A currency's cumulative (issued, redeemed) supply and what is outstanding."""
    issued, redeemed = supply
    return pb.CurrencySupply(
        currency=currency, issued=issued, redeemed=redeemed, outstanding=issued - redeemed
    )


def pvp_to_proto(state: PvpState) -> pb.PvpStatus:
    proposal = state.proposal
    return pb.PvpStatus(
        proposer=proposal.sender,
        pvp_id=proposal.instruction_id,
        proposal=instruction_to_proto(proposal),
        status=_OUTCOME_TO_PROTO[state.status],
        terms_hash=proposal.terms_hash(),
        legs=[leg_to_proto(leg) for leg in proposal.legs()],
        closed_seq=state.closed_seq,
    )


def genesis_to_proto(genesis: Genesis) -> pb.Genesis:
    banks = [
        pb.GenesisBank(
            id=b.id,
            jurisdiction=b.jurisdiction,
            public_key=b.public_key,
            currency=b.currency,
            exponent=b.exponent,
        )
        for b in genesis.central_banks
    ]
    return pb.Genesis(
        chain_id=genesis.chain_id, central_banks=banks, quorum=genesis.quorum, hash=genesis.hash()
    )


def genesis_from_proto(msg: pb.Genesis) -> Genesis:
    """Decode a genesis; refuses one whose stated hash differs from the hash of its fields."""
    banks = tuple(
        GenesisBank(b.id, b.jurisdiction, b.public_key, b.currency, b.exponent)
        for b in msg.central_banks
    )
    genesis = Genesis(msg.chain_id, banks, msg.quorum)
    if msg.hash and msg.hash != genesis.hash():
        raise Refused(Reason.MALFORMED, "genesis: stated hash does not match its fields")
    return genesis


# ---------------------------------------------------------------------------- refusals and queries


def refusal_to_proto(error: Refused) -> pb.Refusal:
    """A refusal for a stream reply, with the status code the unary call would return."""
    return pb.Refusal(
        code=STATUS_OF_REASON[error.reason], reason=error.reason.value, message=error.message
    )


def refusal_from_proto(msg: pb.Refusal) -> Refused:
    """The refusal as the domain error; a reason this version does not know reads as MALFORMED."""
    try:
        reason = Reason(msg.reason)
    except ValueError:
        return Refused(Reason.MALFORMED, f"{msg.reason or msg.code}: {msg.message}")
    return Refused(reason, msg.message)


def submit_response_to_proto(
    correlation_id: int, result: Receipt | Refused
) -> bridge_pb.SubmitResponse:
    """The Submit stream's answer to one request: its receipt or its refusal."""
    if isinstance(result, Refused):
        return bridge_pb.SubmitResponse(
            correlation_id=correlation_id, refusal=refusal_to_proto(result)
        )
    return bridge_pb.SubmitResponse(correlation_id=correlation_id, receipt=receipt_to_proto(result))


def submit_result_from_proto(msg: bridge_pb.SubmitResponse) -> Receipt | Refused:
    """The receipt or refusal a Submit stream response carries; neither set is MALFORMED."""
    which = msg.WhichOneof("result")
    if which == "receipt":
        return receipt_from_proto(msg.receipt)
    if which == "refusal":
        return refusal_from_proto(msg.refusal)
    return Refused(Reason.MALFORMED, f"submit response {msg.correlation_id} carries no result")


def error_detail_to_proto(error: Refused) -> pb.ErrorDetail:
    """The rich status detail attached to a refused unary call."""
    return pb.ErrorDetail(reason=error.reason.value)


def query_message(method: str, request: Message) -> bytes:
    """What a requester signs to authenticate `request` on the RPC `method`.

    `method` is the full gRPC method path, e.g. "/bridge.v1.CentralBank/GetBalances". The
    message is the query domain tag, the method, a NUL byte, then the canonical JSON of the
    request (proto3 JSON mapping with original field names) without `auth.signature`. Sign it,
    then set `request.auth.signature`; servers recompute it the same way to verify.
    """
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    auth = body.get("auth")
    if isinstance(auth, dict):
        auth.pop("signature", None)
    return QUERY_DOMAIN + method.encode() + b"\x00" + canonical_json(body)


# ---------------------------------------------------------------------------- checks


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_LENGTH:
        raise Refused(Reason.MALFORMED, f"{what}: expected {HASH_LENGTH} bytes, got {len(value)}")


def _require_positive(value: int, what: str) -> None:
    if value < 1:
        raise Refused(Reason.MALFORMED, f"{what} must be positive: got {value}")
