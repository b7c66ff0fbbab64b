"""`CentralBankAdminClient`: a central bank's operators' desk (admission, policy, issuance).

Calls `CentralBankAdmin` on the central bank node's admin listener (its own port, loopback by
default; `admin_port` in network.json) with its admin bearer token (keys/<CB>.admin-token)
and, when the network runs mutual TLS, the central bank's certificate; the node signs each
instruction with the central bank's key. Like the bank clients, every call has a deadline,
UNAVAILABLE is retried with the same request (the same instruction id and values return the
original outcome) and failures raise `BridgeRpcError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Amount, CurrencyCode, InstructionId, Millis, Participant, ParticipantId
from bridge.domain import ParticipantStatus as Status
from participants.network_config import NetworkConfig
from participants.sdk._connection import (
    DEFAULT_TIMEOUT,
    RetryPolicy,
    Tls,
    call_with_retry,
    open_channel,
    tls_of,
)
from participants.sdk._models import Account, CurrencySupply, InstructionResult, decoded
from participants.sdk._requests import DEFAULT_VALIDITY_MS, new_instruction_id, wall_clock_ms

__all__ = ["CentralBankAdminClient"]

T = TypeVar("T")
_STATUS_TO_PROTO = {
    Status.ACTIVE: types.PARTICIPANT_STATUS_ACTIVE,
    Status.SUSPENDED: types.PARTICIPANT_STATUS_SUSPENDED,
}


class CentralBankAdminClient:
    """Synchronous client of one central bank's admin service."""

    def __init__(
        self,
        address: str,
        central_bank: ParticipantId,
        token: str,
        *,
        currency: CurrencyCode = "",
        tls: Tls | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        valid_for_ms: Millis = DEFAULT_VALIDITY_MS,
    ) -> None:
        self.central_bank = central_bank
        self.currency = currency
        self.timeout = timeout
        self.retry = retry
        self.valid_for_ms = valid_for_ms
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel = open_channel(address, tls)
        self._stub: Any = pb_grpc.CentralBankAdminStub(self._channel)

    @classmethod
    def from_network(
        cls, network: Path, central_bank: ParticipantId, *, timeout: float = DEFAULT_TIMEOUT
    ) -> CentralBankAdminClient:
        """The admin client of `central_bank` in the network directory `network`."""
        config = NetworkConfig.load(network)
        cb = config.central_bank(central_bank)
        token = (config.directory / "keys" / f"{cb.id}.admin-token").read_text().strip()
        return cls(
            cb.admin_address,
            cb.id,
            token,
            currency=cb.currency,
            tls=tls_of(config, cb.id),
            timeout=timeout,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CentralBankAdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ instructions

    def admit_bank(
        self,
        bank: ParticipantId,
        public_key: bytes,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Admit a commercial bank in this central bank's jurisdiction, with its SEC1 key."""
        request = pb.AdmitBankRequest(
            **self._header(instruction_id, valid_until, signed_at),
            body=types.AdmitBank(bank=bank, public_key=public_key),
        )
        return self._instruction("AdmitBank", request, timeout)

    def suspend_bank(
        self,
        bank: ParticipantId,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        request = pb.BankStatusRequest(
            **self._header(instruction_id, valid_until, signed_at), bank=bank
        )
        return self._instruction("SuspendBank", request, timeout)

    def reactivate_bank(
        self,
        bank: ParticipantId,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        request = pb.BankStatusRequest(
            **self._header(instruction_id, valid_until, signed_at), bank=bank
        )
        return self._instruction("ReactivateBank", request, timeout)

    def set_policy(
        self,
        *,
        per_transfer_limit: Amount = 0,
        per_day_limit: Amount = 0,
        allowed_jurisdictions: Sequence[str] = (),
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Replace the policy for this central bank's currency (0: no limit; () : all)."""
        body = types.SetPolicy(
            per_transfer_limit=per_transfer_limit,
            per_day_limit=per_day_limit,
            allowed_jurisdictions=list(allowed_jurisdictions),
        )
        request = pb.SetPolicyRequest(
            **self._header(instruction_id, valid_until, signed_at), body=body
        )
        return self._instruction("SetPolicy", request, timeout)

    def issue(
        self,
        to: ParticipantId,
        currency: CurrencyCode,
        amount: Amount,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Issue `amount` (minor units) of this central bank's `currency` to bank `to`."""
        body = types.Issue(to=to, currency=currency, amount=amount)
        request = pb.IssueRequest(**self._header(instruction_id, valid_until, signed_at), body=body)
        return self._instruction("Issue", request, timeout)

    def freeze(
        self,
        participant: ParticipantId,
        *,
        currency: CurrencyCode | None = None,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Freeze `participant`'s account in this central bank's currency."""
        return self._freeze(
            participant, currency, True, instruction_id, valid_until, signed_at, timeout
        )

    def unfreeze(
        self,
        participant: ParticipantId,
        *,
        currency: CurrencyCode | None = None,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        return self._freeze(
            participant, currency, False, instruction_id, valid_until, signed_at, timeout
        )

    def _freeze(
        self,
        participant: ParticipantId,
        currency: CurrencyCode | None,
        frozen: bool,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None,
        timeout: float | None,
    ) -> InstructionResult:
        body = types.FreezeAccount(
            participant=participant, currency=currency or self.currency, frozen=frozen
        )
        request = pb.FreezeAccountRequest(
            **self._header(instruction_id, valid_until, signed_at), body=body
        )
        return self._instruction("FreezeAccount", request, timeout)

    # ------------------------------------------------------------------ supervision

    def list_banks(
        self, *, status: Status | None = None, timeout: float | None = None
    ) -> list[Participant]:
        """This central bank's commercial banks (only those with `status` when given)."""
        wanted = _STATUS_TO_PROTO[status] if status else types.PARTICIPANT_STATUS_UNSPECIFIED
        request = pb.ListBanksRequest(status=wanted)
        reply = self._call("ListBanks", request, timeout, _identity)
        return [decoded(wire.participant_from_proto, p) for p in reply.participants]

    def supply(
        self, currency: CurrencyCode | None = None, *, timeout: float | None = None
    ) -> CurrencySupply:
        """Issued, redeemed and outstanding amounts of this central bank's currency."""
        request = types.CurrencySupplyRequest(currency=currency or self.currency)
        return self._call("GetCurrencySupply", request, timeout, CurrencySupply.from_proto)

    def list_accounts(
        self,
        *,
        participant: ParticipantId = "",
        currency: CurrencyCode = "",
        timeout: float | None = None,
    ) -> list[Account]:
        """Supervised accounts: all in this currency and all of this central bank's banks."""
        request = pb.ListAccountsRequest(participant=participant, currency=currency)
        reply = self._call("ListAccounts", request, timeout, _identity)
        return [Account.from_proto(a) for a in reply.accounts]

    # ------------------------------------------------------------------ transport

    def _header(
        self,
        instruction_id: InstructionId | None,
        valid_until: Millis | None,
        signed_at: Millis | None,
    ) -> dict[str, Any]:
        """Id, validity and signing time of an instruction the node builds and signs; the
        signing time is the client's clock unless given (to resubmit the very same body)."""
        now = wall_clock_ms()
        return {
            "instruction_id": instruction_id or new_instruction_id(),
            "valid_until": valid_until if valid_until is not None else now + self.valid_for_ms,
            "signed_at": signed_at if signed_at is not None else now,
        }

    def _instruction(self, name: str, request: Message, timeout: float | None) -> InstructionResult:
        return self._call(name, request, timeout, InstructionResult.from_proto)

    def _call(
        self, name: str, request: Message, timeout: float | None, read: Callable[[Any], T]
    ) -> T:
        response = call_with_retry(
            getattr(self._stub, name),
            request,
            timeout=self.timeout if timeout is None else timeout,
            retry=self.retry,
            metadata=self._metadata,
        )
        return read(response)


def _identity(msg: Any) -> Any:
    return msg
