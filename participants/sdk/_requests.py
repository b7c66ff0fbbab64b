"""What both bank clients send: signed instructions and signed queries, built without I/O.

`BankRequests` turns a bank's intent into the exact message for one RPC, and names the RPC and
how to read its answer. The sync and async clients only add the transport (deadline, retry).
Instruction ids are generated when not given; an instruction is validated here as the bridge
would validate it, so a malformed one is refused before it is signed or sent.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import Signer
from bridge.domain import (
    AcceptPvp,
    Amount,
    CancelPvp,
    CurrencyCode,
    DualPvp,
    Envelope,
    Instruction,
    InstructionId,
    Millis,
    ParticipantId,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    validate_shape,
)
from bridge.errors import Reason, Refused
from bridge.log.head import SignedHead, signed_head_from_proto
from bridge.rates import inverse_rate
from bridge.signing import sign_as_party
from participants.auth import sign_query
from participants.sdk._errors import BridgeRpcError
from participants.sdk._models import (
    Balance,
    InstructionResult,
    PvpInfo,
    SignedDualPvp,
)

__all__ = ["BankRequests", "ProposalBook", "Rpc", "new_instruction_id", "wall_clock_ms"]

T = TypeVar("T")
SERVICE = "/bridge.v1.CentralBank/"
DEFAULT_VALIDITY_MS = 300_000  # an instruction not recorded within 5 minutes is refused
DEFAULT_SETTLE_WITHIN_MS = 300_000
_REMEMBERED = 1024  # recent instruction ids kept so that a repeated call resends the same body
_VARIANTS = 4  # bodies kept per id: the first one sent and the latest others
_ISSUE_PREFIX = "issue-"  # the node names an issuance `issue-<bank>-<request id>`
MAX_ID_LENGTH = 64


def wall_clock_ms() -> Millis:
    return time.time_ns() // 1_000_000


def new_instruction_id(prefix: str = "") -> InstructionId:
    """A fresh unique instruction id: `prefix` + 32 hex digits of a random UUID."""
    return f"{prefix}{uuid.uuid4().hex}"[:MAX_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class Rpc(Generic[T]):
    """One unary call to make: the RPC's name, its request and how to read its answer."""

    name: str
    request: Message
    read: Callable[[Any], T]

    @property
    def method(self) -> str:
        return SERVICE + self.name


def _result(msg: types.InstructionStatus) -> InstructionResult:
    return InstructionResult.from_proto(msg)


def _balances(msg: types.AccountList) -> dict[CurrencyCode, Balance]:
    return {a.currency: Balance.from_proto(a) for a in sorted(msg.accounts, key=_by_currency)}


def _by_currency(account: types.Account) -> str:
    currency: str = account.currency
    return currency


class BankRequests:
    """Builds and signs every request one bank sends to its central bank's node."""

    def __init__(
        self,
        bank_id: ParticipantId,
        key: Signer,
        *,
        valid_for_ms: Millis = DEFAULT_VALIDITY_MS,
        clock: Callable[[], Millis] = wall_clock_ms,
    ) -> None:
        self.bank_id = bank_id
        self.key = key
        self.valid_for_ms = valid_for_ms
        self.clock = clock
        # every body recently signed under an id (the first one sent and the latest others):
        # the bridge recorded at most one of them, and a refused other body (ID_CONFLICT)
        # must not hide it from a later call repeating the recorded one
        self._sent: OrderedDict[InstructionId, list[Envelope]] = OrderedDict()
        self._lock = threading.Lock()  # clients may be shared by threads

    # ------------------------------------------------------------------ instructions

    def instruction(self, body: Instruction) -> types.SignedInstruction:
        """Validate and sign `body`; a repeat of a recent body (same id and terms, any validity
        and signing time) is the very same signed message, so the bridge recognises the
        resubmission."""
        try:
            validate_shape(body)
        except Refused as refusal:
            raise BridgeRpcError.from_refusal(refusal) from refusal
        previous = self._previous(body)
        if previous is not None:
            return self._encode(previous)
        envelope = sign_as_party(Envelope.of(body), self.bank_id, self.key)
        self._remember(envelope)
        return self._encode(envelope)

    def _previous(self, body: Instruction) -> Envelope | None:
        """A recently signed envelope with this id and these terms (any validity), if any."""
        with self._lock:
            sent = list(self._sent.get(body.instruction_id, ()))
        for envelope in sent:
            sent_body = envelope.body
            if (
                replace(body, valid_until=sent_body.valid_until, signed_at=sent_body.signed_at)
                == sent_body
            ):
                return envelope
        return None

    def _remember(self, envelope: Envelope) -> None:
        instruction_id = envelope.body.instruction_id
        with self._lock:
            variants = self._sent.setdefault(instruction_id, [])
            variants.append(envelope)
            if len(variants) > _VARIANTS:
                del variants[1]  # keep the first one sent: the likeliest to be recorded
            self._sent.move_to_end(instruction_id)
            while len(self._sent) > _REMEMBERED:
                self._sent.popitem(last=False)

    def _encode(self, envelope: Envelope) -> types.SignedInstruction:
        try:
            return wire.envelope_to_proto(envelope)
        except Refused as refusal:
            raise BridgeRpcError.from_refusal(refusal) from refusal

    def _header(
        self, instruction_id: InstructionId | None, valid_until: Millis | None
    ) -> tuple[InstructionId, ParticipantId, Millis]:
        return (instruction_id or new_instruction_id(), self.bank_id, self._until(valid_until))

    def _until(self, valid_until: Millis | None) -> Millis:
        return valid_until if valid_until is not None else self.clock() + self.valid_for_ms

    def _signing_time(self, signed_at: Millis | None) -> Millis:
        """The signing time of a body built now: the one given (to resubmit an instruction
        signed earlier, body for body) or this client's clock."""
        return signed_at if signed_at is not None else self.clock()

    def pay(
        self,
        payee: ParticipantId,
        currency: CurrencyCode,
        amount: Amount,
        reference: str,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = Pay(
            *self._header(instruction_id, valid_until),
            payee,
            currency,
            amount,
            reference,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("Pay", self.instruction(body), _result)

    def propose_pvp(
        self,
        counterparty: ParticipantId,
        pay: tuple[CurrencyCode, Amount],
        receive: tuple[CurrencyCode, Amount],
        rate: str,
        settle_by: Millis,
        reference: str,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = ProposePvp(
            *self._header(instruction_id, valid_until),
            counterparty,
            pay[0],
            pay[1],
            receive[0],
            receive[1],
            rate,
            settle_by,
            reference,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("ProposePvp", self.instruction(body), _result)

    def settle_by(self, settle_within_ms: Millis | None, settle_by: Millis | None) -> Millis:
        """The absolute settlement deadline of a proposal from either way of giving it."""
        if settle_within_ms is not None and settle_by is not None:
            raise ValueError("give settle_within_ms or settle_by, not both")
        if settle_by is not None:
            return settle_by
        within = DEFAULT_SETTLE_WITHIN_MS if settle_within_ms is None else settle_within_ms
        return self.clock() + within

    def accept_pvp(
        self,
        proposer: ParticipantId,
        pvp_id: InstructionId,
        terms_hash: str,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = AcceptPvp(
            *self._header(instruction_id, valid_until),
            proposer,
            pvp_id,
            terms_hash,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("AcceptPvp", self.instruction(body), _result)

    def reject_pvp(
        self,
        proposer: ParticipantId,
        pvp_id: InstructionId,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = RejectPvp(
            *self._header(instruction_id, valid_until),
            proposer,
            pvp_id,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("RejectPvp", self.instruction(body), _result)

    def cancel_pvp(
        self,
        pvp_id: InstructionId,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = CancelPvp(
            *self._header(instruction_id, valid_until),
            pvp_id,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("CancelPvp", self.instruction(body), _result)

    def redeem(
        self,
        currency: CurrencyCode,
        amount: Amount,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        body = Redeem(
            *self._header(instruction_id, valid_until),
            currency,
            amount,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("RequestRedemption", self.instruction(body), _result)

    def sign_dual_pvp(
        self,
        counterparty: ParticipantId,
        pay: tuple[CurrencyCode, Amount],
        receive: tuple[CurrencyCode, Amount],
        rate: str,
        reference: str,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> SignedDualPvp:
        """Our signature on a dual PvP that `counterparty` will submit (it is the sender).

        `pay`, `receive` and `rate` are from our side: we pay `pay`, we receive `receive`,
        `rate` is what we receive per unit we pay. The instruction states the trade from the
        submitter's side, so its legs are swapped and its rate is 1 / `rate`.
        """
        body = DualPvp(
            instruction_id or new_instruction_id(),
            counterparty,
            self._until(valid_until),
            self.bank_id,
            receive[0],
            receive[1],
            pay[0],
            pay[1],
            rate,
            reference,
            signed_at=self._signing_time(signed_at),
        )
        try:
            validate_shape(body)  # our own rate first: a malformed one is refused as given
            body = replace(body, rate=inverse_rate(rate))
            validate_shape(body)
        except ValueError as error:
            refusal = Refused(Reason.MALFORMED, f"pvp_dual.rate: {error}")
            raise BridgeRpcError.from_refusal(refusal) from error
        except Refused as refusal:
            raise BridgeRpcError.from_refusal(refusal) from refusal
        return SignedDualPvp.of(sign_as_party(Envelope.of(body), self.bank_id, self.key))

    def submit_dual_pvp(self, signed: SignedDualPvp) -> Rpc[InstructionResult]:
        """Add our signature to a dual PvP signed by its counterparty, ready to submit."""
        if signed.body.sender != self.bank_id:
            raise BridgeRpcError.from_refusal(
                Refused(
                    Reason.NOT_A_PARTY,
                    f"this dual PvP is to be submitted by {signed.body.sender}, not {self.bank_id}",
                )
            )
        try:
            validate_shape(signed.body)
        except Refused as refusal:
            raise BridgeRpcError.from_refusal(refusal) from refusal
        envelope = sign_as_party(signed.envelope(), self.bank_id, self.key)
        return Rpc("SubmitDualPvp", self._encode(envelope), _result)

    # ------------------------------------------------------------------ signed queries

    def _query(self, name: str, request: T) -> T:
        return sign_query(SERVICE + name, request, self.bank_id, self.key, self.clock())

    def request_issuance(
        self,
        amount: Amount,
        request_id: str | None,
        valid_until: Millis | None,
        signed_at: Millis | None = None,
    ) -> Rpc[InstructionResult]:
        room = MAX_ID_LENGTH - len(f"{_ISSUE_PREFIX}{self.bank_id}-")
        request_id = request_id or new_instruction_id()[: max(room, 1)]
        request = pb.IssuanceRequest(
            request_id=request_id,
            valid_until=self._until(valid_until),
            amount=amount,
            signed_at=self._signing_time(signed_at),
        )
        return Rpc("RequestIssuance", self._query("RequestIssuance", request), _result)

    def status(
        self, instruction_id: InstructionId, sender: ParticipantId | None = None
    ) -> Rpc[InstructionResult]:
        request = pb.InstructionStatusQuery(
            sender=sender or self.bank_id, instruction_id=instruction_id
        )
        return Rpc("GetInstructionStatus", self._query("GetInstructionStatus", request), _result)

    def balances(self, currency: CurrencyCode) -> Rpc[dict[CurrencyCode, Balance]]:
        request = pb.BalancesQuery(currency=currency)
        return Rpc("GetBalances", self._query("GetBalances", request), _balances)

    def history(self, from_seq: int, limit: int) -> Rpc[pb.HistoryPage]:
        request = pb.HistoryQuery(from_seq=from_seq, limit=limit)
        return Rpc("GetHistory", self._query("GetHistory", request), _identity_page)

    def pvp(self, proposer: ParticipantId, pvp_id: InstructionId) -> Rpc[PvpInfo]:
        request = pb.PvpQuery(proposer=proposer, pvp_id=pvp_id)
        return Rpc("GetPvp", self._query("GetPvp", request), PvpInfo.from_proto)

    def signed_head(self) -> Rpc[SignedHead]:
        request = pb.SignedHeadQuery()
        return Rpc("GetSignedHead", self._query("GetSignedHead", request), signed_head_from_proto)

    def watch(self, from_seq: int) -> pb.WatchSettlementsQuery:
        return self._query("WatchSettlements", pb.WatchSettlementsQuery(from_seq=from_seq))


def _identity_page(msg: pb.HistoryPage) -> pb.HistoryPage:
    return msg


class ProposalBook:
    """Proposals seen in history and watch streams, so an acceptance's legs can be shown."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._proposals: OrderedDict[tuple[ParticipantId, InstructionId], ProposePvp] = (
            OrderedDict()
        )

    def note(self, instruction: Instruction) -> None:
        if isinstance(instruction, ProposePvp):
            with self._lock:
                self._proposals[(instruction.sender, instruction.instruction_id)] = instruction
                while len(self._proposals) > self._capacity:
                    self._proposals.popitem(last=False)

    def get(self, proposer: ParticipantId, pvp_id: InstructionId) -> ProposePvp | None:
        return self._proposals.get((proposer, pvp_id))

    def missing(self, instruction: Instruction) -> tuple[ParticipantId, InstructionId] | None:
        """The PvP whose proposal an acceptance needs and this book lacks, if any."""
        if (
            isinstance(instruction, AcceptPvp)
            and self.get(instruction.proposer, instruction.pvp_id) is None
        ):
            return (instruction.proposer, instruction.pvp_id)
        return None
