"""What a bank client returns: frozen values converted from the wire messages at the edge.

Amounts are integers in minor units, times are the ledger's logical milliseconds (Unix ms).
Instructions are the domain's own values (`bridge.domain.Pay`, `ProposePvp`, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import Message

from bridge import wire
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import (
    AcceptPvp,
    Amount,
    CurrencyCode,
    DualPvp,
    Envelope,
    Instruction,
    InstructionId,
    Issue,
    Leg,
    Millis,
    Outcome,
    ParticipantId,
    Pay,
    ProposePvp,
    Redeem,
    Signature,
)
from bridge.errors import Reason, Refused
from participants.sdk._errors import BridgeRpcError

__all__ = [
    "Account",
    "Balance",
    "CurrencySupply",
    "HistoryEntry",
    "InstructionResult",
    "Money",
    "PvpInfo",
    "SignedDualPvp",
]

M = TypeVar("M", bound=Message)
T = TypeVar("T")
DUAL_PVP_FORMAT = "cbdc-bridge/dual-pvp/v1"


class Money(NamedTuple):
    """An amount of one currency, in minor units."""

    currency: CurrencyCode
    amount: Amount


@dataclass(frozen=True, slots=True)
class InstructionResult:
    """Where one instruction stands: what it did, its place in the log and its finality."""

    sender: ParticipantId
    instruction_id: InstructionId
    outcome: Outcome
    seq: int
    block_height: int = 0  # 0 until the entry's block is known to the answering node
    final: bool = False  # the block holding it is attested by a quorum of central banks
    duplicate: bool = False  # answered a resubmission: the original outcome, nothing redone
    body_hash: bytes = b""

    @property
    def settled(self) -> bool:
        """True when every leg moved (payment, dual-signed or accepted PvP)."""
        return self.outcome is Outcome.SETTLED

    @classmethod
    def from_proto(cls, msg: types.InstructionStatus) -> InstructionResult:
        receipt = decoded(wire.receipt_from_proto, msg.receipt)
        return cls(
            sender=receipt.sender,
            instruction_id=receipt.instruction_id,
            outcome=receipt.outcome,
            seq=receipt.seq,
            block_height=msg.block_height,
            final=msg.final,
            duplicate=receipt.duplicate,
            body_hash=receipt.body_hash,
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """The bank's account in one currency."""

    currency: CurrencyCode
    available: Amount
    held: Amount = 0  # reserved by PvPs it proposed that are not settled yet
    frozen: bool = False

    @property
    def total(self) -> Amount:
        return self.available + self.held

    @classmethod
    def from_proto(cls, msg: types.Account) -> Balance:
        return cls(msg.currency, msg.available, msg.held, msg.frozen)


@dataclass(frozen=True, slots=True)
class Account:
    """One supervised account, as a central bank lists them."""

    participant: ParticipantId
    currency: CurrencyCode
    available: Amount
    held: Amount = 0
    frozen: bool = False

    @classmethod
    def from_proto(cls, msg: types.Account) -> Account:
        return cls(msg.participant, msg.currency, msg.available, msg.held, msg.frozen)


@dataclass(frozen=True, slots=True)
class CurrencySupply:
    """Cumulative issuance of one currency; outstanding = issued - redeemed."""

    currency: CurrencyCode
    issued: Amount
    redeemed: Amount
    outstanding: Amount

    @classmethod
    def from_proto(cls, msg: types.CurrencySupply) -> CurrencySupply:
        return cls(msg.currency, msg.issued, msg.redeemed, msg.outstanding)


@dataclass(frozen=True, slots=True)
class PvpInfo:
    """A two-phase PvP as recorded: its terms from the proposer's side, and its state."""

    proposer: ParticipantId
    pvp_id: InstructionId
    counterparty: ParticipantId
    pay: Money  # what the proposer pays the counterparty
    receive: Money  # what the counterparty pays the proposer
    rate: str
    settle_by: Millis
    reference: str
    status: Outcome  # HELD, then SETTLED, REJECTED, CANCELLED or EXPIRED
    terms_hash: str  # what an acceptance signs: hash of the proposal as decoded here
    closed_seq: int
    proposal: ProposePvp

    @property
    def pending(self) -> bool:
        return self.status is Outcome.HELD

    @classmethod
    def from_proposal(
        cls, proposal: ProposePvp, status: Outcome = Outcome.HELD, closed_seq: int = 0
    ) -> PvpInfo:
        return cls(
            proposer=proposal.sender,
            pvp_id=proposal.instruction_id,
            counterparty=proposal.counterparty,
            pay=Money(proposal.pay_currency, proposal.pay_amount),
            receive=Money(proposal.receive_currency, proposal.receive_amount),
            rate=proposal.rate,
            settle_by=proposal.settle_by,
            reference=proposal.reference,
            status=status,
            terms_hash=proposal.terms_hash(),
            closed_seq=closed_seq,
            proposal=proposal,
        )

    @classmethod
    def from_proto(cls, msg: types.PvpStatus) -> PvpInfo:
        proposal = decoded(wire.instruction_from_proto, msg.proposal)
        if not isinstance(proposal, ProposePvp):
            raise BridgeRpcError.from_refusal(
                Refused(Reason.MALFORMED, f"PvP proposal is a {proposal.KIND} instruction")
            )
        status = decoded(wire.outcome_from_proto, msg.status)
        return cls.from_proposal(proposal, status, msg.closed_seq)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One settlement-log entry the bank is a party to, with the block that seals it."""

    seq: int
    time: Millis
    block_height: int  # 0 if sent before its block was sealed
    outcome: Outcome
    instruction: Instruction
    legs: tuple[Leg, ...]  # what moved; empty when nothing did (held, released) or unknown

    @property
    def kind(self) -> str:
        return self.instruction.KIND

    @property
    def sender(self) -> ParticipantId:
        return self.instruction.sender

    @property
    def instruction_id(self) -> InstructionId:
        return self.instruction.instruction_id

    @property
    def reference(self) -> str:
        reference: str = getattr(self.instruction, "reference", "")
        return reference

    def legs_of(self, bank: ParticipantId) -> tuple[Leg, ...]:
        """The legs `bank` paid or received."""
        return tuple(leg for leg in self.legs if bank in (leg.payer, leg.payee))

    @classmethod
    def from_proto(
        cls,
        msg: types.EntryEvent,
        proposal_of: Callable[[ParticipantId, InstructionId], ProposePvp | None] = (
            lambda proposer, pvp_id: None
        ),
    ) -> HistoryEntry:
        """Decode an entry; `proposal_of` supplies the proposal an acceptance settled."""
        entry = decoded(wire.entry_from_proto, msg.entry)
        body = entry.envelope.body
        return cls(
            seq=entry.seq,
            time=entry.time,
            block_height=msg.block_height,
            outcome=entry.outcome,
            instruction=body,
            legs=_legs(body, entry.outcome, proposal_of),
        )


def _legs(
    body: Instruction,
    outcome: Outcome,
    proposal_of: Callable[[ParticipantId, InstructionId], ProposePvp | None],
) -> tuple[Leg, ...]:
    if isinstance(body, Pay):
        return (Leg(body.sender, body.payee, body.currency, body.amount),)
    if isinstance(body, DualPvp):
        return body.legs()
    if isinstance(body, Issue):
        return (Leg(body.sender, body.to, body.currency, body.amount),)
    if isinstance(body, Redeem):
        return (Leg(body.sender, "", body.currency, body.amount),)  # destroyed by the issuer
    if isinstance(body, AcceptPvp) and outcome is Outcome.SETTLED:
        proposal = proposal_of(body.proposer, body.pvp_id)
        return () if proposal is None else proposal.legs()
    return ()


@dataclass(frozen=True, slots=True)
class SignedDualPvp:
    """A dual-signed PvP body with the counterparty's signature, to hand to the submitter.

    The submitting bank is `body.sender`; the bank that signed this is `body.counterparty`.
    Exchange it off-line (e.g. as the JSON of `to_json`); the submitter adds its own signature
    with `submit_dual_pvp`.
    """

    body: DualPvp
    signature: Signature  # the counterparty's own signature over the canonical body

    @property
    def submitter(self) -> ParticipantId:
        return self.body.sender

    @property
    def signer(self) -> ParticipantId:
        return self.body.counterparty

    def envelope(self) -> Envelope:
        return Envelope.of(self.body, (self.signature,))

    def to_json(self) -> str:
        document = {
            "format": DUAL_PVP_FORMAT,
            "body": self.body.to_fields(),
            "signatures": self.envelope().signatures_fields(),
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SignedDualPvp:
        """Parse and check a document made by `to_json`; raises ValueError if it is not one."""
        try:
            document = json.loads(text)
            if not isinstance(document, Mapping) or document.get("format") != DUAL_PVP_FORMAT:
                raise ValueError(f"not a {DUAL_PVP_FORMAT} document")
            envelope = Envelope.from_fields(document["body"], document["signatures"])
        except Refused as refusal:
            raise ValueError(f"invalid dual PvP: {refusal}") from refusal
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid dual PvP document: {exc}") from exc
        return cls.of(envelope)

    @classmethod
    def of(cls, envelope: Envelope) -> SignedDualPvp:
        body = envelope.body
        if not isinstance(body, DualPvp):
            raise ValueError(f"expected a pvp_dual instruction, got {body.KIND}")
        signature = envelope.party_signature(body.counterparty)
        if signature is None or len(envelope.signatures) != 1:
            raise ValueError(f"expected exactly the signature of {body.counterparty}")
        return cls(body, signature)


def decoded(convert: Callable[[Any], T], msg: Any) -> T:
    """Convert a wire message; a malformed answer becomes a BridgeRpcError (MALFORMED)."""
    try:
        return convert(msg)
    except Refused as refusal:
        raise BridgeRpcError.from_refusal(refusal) from refusal
