"""`AsyncBankClient`: a commercial bank's asyncio client of its central bank's node (grpc.aio).

The same methods, arguments and results as `BankClient`, awaited. Create it inside a running
event loop (e.g. `async with AsyncBankClient.from_network(...) as client:`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import PrivateKey, Signer
from bridge.domain import (
    Amount,
    CurrencyCode,
    InstructionId,
    Millis,
    Outcome,
    ParticipantId,
)
from bridge.errors import Reason
from participants.sdk._connection import (
    DEFAULT_TIMEOUT,
    NO_RETRY,
    BankSettings,
    RetryPolicy,
    Tls,
    next_pause,
    open_aio_channel,
    remaining,
)
from participants.sdk._errors import BridgeRpcError
from participants.sdk._models import (
    Balance,
    HistoryEntry,
    InstructionResult,
    PvpInfo,
    SignedDualPvp,
)
from participants.sdk._polling import (
    DEFAULT_WAIT,
    NOT_RECORDED_YET,
    budget,
    not_final,
    polling,
    waitable,
)
from participants.sdk._requests import (
    DEFAULT_VALIDITY_MS,
    BankRequests,
    ProposalBook,
    Rpc,
)

__all__ = ["AsyncBankClient"]

T = TypeVar("T")


class AsyncBankClient:
    """A bank's view of the bridge through its home central bank's node.

    Amounts are integers in minor units. Instruction methods sign with the bank's key, generate
    an instruction id unless given one, and return an `InstructionResult`; calling one again
    with the same id and terms resends the same signed instruction, and the bridge answers with
    the original outcome (`duplicate=True`). Failed calls raise `BridgeRpcError`.
    """

    def __init__(
        self,
        address: str,
        bank_id: ParticipantId,
        key: Signer | Path,
        *,
        tls: Tls | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        valid_for_ms: Millis = DEFAULT_VALIDITY_MS,
    ) -> None:
        signer = PrivateKey.load(key) if isinstance(key, Path) else key
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._requests = BankRequests(bank_id, signer, valid_for_ms=valid_for_ms)
        self._proposals = ProposalBook()
        self._channel = open_aio_channel(address, tls)
        self._stub: Any = pb_grpc.CentralBankStub(self._channel)

    @classmethod
    def from_network(
        cls,
        network: Path,
        bank_id: ParticipantId,
        *,
        central_bank: ParticipantId | None = None,
        key_path: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
    ) -> AsyncBankClient:
        """A client for `bank_id` of the network in directory `network` (see BankSettings)."""
        settings = BankSettings.from_network(
            network, bank_id, central_bank=central_bank, key_path=key_path
        )
        return cls(
            settings.address,
            settings.bank_id,
            settings.key,
            tls=settings.tls,
            timeout=timeout,
            retry=retry,
        )

    @property
    def bank_id(self) -> ParticipantId:
        return self._requests.bank_id

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncBankClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ payments and PvP

    async def pay(
        self,
        payee: ParticipantId,
        currency: CurrencyCode,
        amount: Amount,
        reference: str = "",
        instruction_id: InstructionId | None = None,
        *,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Pay `amount` of `currency` to `payee`; settles at once or is refused."""
        rpc = self._requests.pay(
            payee, currency, amount, reference, instruction_id, valid_until, signed_at
        )
        return await self._call(rpc, timeout)

    async def propose_pvp(
        self,
        counterparty: ParticipantId,
        *,
        pay: tuple[CurrencyCode, Amount],
        receive: tuple[CurrencyCode, Amount],
        rate: str,
        settle_within_ms: Millis | None = None,
        settle_by: Millis | None = None,
        reference: str = "",
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Propose an FX trade: our `pay` leg is held (outcome HELD) until the counterparty
        accepts or rejects it, we cancel it, or `settle_by` passes. The PvP id is the
        result's instruction id. `rate` is what we receive per unit we pay, in major units;
        the bridge refuses it (RATE_MISMATCH) if it contradicts the amounts."""
        deadline = self._requests.settle_by(settle_within_ms, settle_by)
        rpc = self._requests.propose_pvp(
            counterparty,
            pay,
            receive,
            rate,
            deadline,
            reference,
            instruction_id,
            valid_until,
            signed_at,
        )
        return await self._call(rpc, timeout)

    async def accept_pvp(
        self,
        proposer: ParticipantId,
        pvp_id: InstructionId,
        *,
        terms_hash: str | None = None,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Accept a PvP proposed to us; both legs settle in one step (outcome SETTLED).

        Without `terms_hash` the hash of the proposal as received is signed: the proposal
        this client already read in a watch or history page, else fetched (one more call).
        Pass `PvpInfo.terms_hash` of terms you have checked to accept exactly those.
        """
        if terms_hash is None:
            known = self._proposals.get(proposer, pvp_id)
            if known is not None:
                terms_hash = known.terms_hash()
            else:
                terms_hash = (await self.pvp(proposer, pvp_id, timeout=timeout)).terms_hash
        rpc = self._requests.accept_pvp(
            proposer, pvp_id, terms_hash, instruction_id, valid_until, signed_at
        )
        return await self._call(rpc, timeout)

    async def reject_pvp(
        self,
        proposer: ParticipantId,
        pvp_id: InstructionId,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Decline a PvP proposed to us; the proposer's hold is released."""
        rpc = self._requests.reject_pvp(proposer, pvp_id, instruction_id, valid_until, signed_at)
        return await self._call(rpc, timeout)

    async def cancel_pvp(
        self,
        pvp_id: InstructionId,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Withdraw a PvP we proposed; our hold is released."""
        rpc = self._requests.cancel_pvp(pvp_id, instruction_id, valid_until, signed_at)
        return await self._call(rpc, timeout)

    def sign_dual_pvp(
        self,
        counterparty: ParticipantId,
        *,
        pay: tuple[CurrencyCode, Amount],
        receive: tuple[CurrencyCode, Amount],
        rate: str,
        reference: str = "",
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
    ) -> SignedDualPvp:
        """Sign our side of a dual-signed PvP for `counterparty` to submit; no call is made.

        We pay `pay` and receive `receive`; `rate` is what we receive per unit we pay. The
        instruction states the trade from the submitter's side (rate 1 / `rate`), and the
        bridge refuses it (RATE_MISMATCH) if the rate contradicts the amounts. Hand the result
        (e.g. its `to_json()`) to the counterparty, who calls `submit_dual_pvp` with it.
        """
        return self._requests.sign_dual_pvp(
            counterparty, pay, receive, rate, reference, instruction_id, valid_until, signed_at
        )

    async def submit_dual_pvp(
        self, signed_by_counterparty: SignedDualPvp, *, timeout: float | None = None
    ) -> InstructionResult:
        """Add our signature to a dual PvP the counterparty signed and submit it; both legs
        settle in one step or nothing happens."""
        return await self._call(self._requests.submit_dual_pvp(signed_by_counterparty), timeout)

    # ------------------------------------------------------------------ issuance

    async def request_issuance(
        self,
        amount: Amount,
        *,
        request_id: str | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Ask our central bank to issue `amount` of its currency to us (outcome ISSUED).

        The result's sender is the central bank and its instruction id is
        `issue-<bank>-<request_id>`. To retry later, pass the same `request_id`,
        `valid_until` and `signed_at`: the node then writes the same instruction and the
        bridge answers the original outcome."""
        return await self._call(
            self._requests.request_issuance(amount, request_id, valid_until, signed_at), timeout
        )

    async def redeem(
        self,
        currency: CurrencyCode,
        amount: Amount,
        *,
        instruction_id: InstructionId | None = None,
        valid_until: Millis | None = None,
        signed_at: Millis | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Return `amount` of `currency` to its issuer, which destroys it (outcome REDEEMED)."""
        return await self._call(
            self._requests.redeem(currency, amount, instruction_id, valid_until, signed_at), timeout
        )

    # ------------------------------------------------------------------ reads

    async def balances(
        self, currency: CurrencyCode = "", *, timeout: float | None = None
    ) -> dict[CurrencyCode, Balance]:
        """Our accounts by currency (only `currency` when given)."""
        return await self._call(self._requests.balances(currency), timeout)

    async def balance(self, currency: CurrencyCode, *, timeout: float | None = None) -> Balance:
        """Our account in `currency` (zero if we never held any)."""
        found = (await self.balances(currency, timeout=timeout)).get(currency)
        return found if found is not None else Balance(currency, 0)

    async def status(
        self,
        instruction_id: InstructionId,
        *,
        sender: ParticipantId | None = None,
        timeout: float | None = None,
    ) -> InstructionResult:
        """Where an instruction stands: ours (NOT_FOUND until the bridge records it), or
        `sender`'s one that we are a party to (e.g. the central bank's issuance to us)."""
        return await self._call(self._requests.status(instruction_id, sender), timeout)

    async def pvp(
        self, proposer: ParticipantId, pvp_id: InstructionId, *, timeout: float | None = None
    ) -> PvpInfo:
        """A PvP we proposed or were proposed."""
        return await self._call(self._requests.pvp(proposer, pvp_id), timeout)

    async def history(
        self, from_seq: int = 1, *, limit: int = 100, timeout: float | None = None
    ) -> list[HistoryEntry]:
        """Up to `limit` entries we are a party to, from `from_seq` on, oldest first.

        For the next page ask again from the last entry's seq + 1."""
        page = await self._call(self._requests.history(from_seq, limit), timeout)
        return [await self._entry(event, timeout) for event in page.entries]

    async def wait_settled(
        self,
        instruction_id: InstructionId,
        *,
        sender: ParticipantId | None = None,
        timeout: float = DEFAULT_WAIT,
    ) -> InstructionResult:
        """Wait until the bridge has recorded an instruction (see `status`); its outcome says
        what it did (SETTLED, HELD, ...). Raises the last error if not recorded in time."""
        return await self._poll(instruction_id, sender, timeout, final=False)

    async def wait_final(
        self,
        instruction_id: InstructionId,
        *,
        sender: ParticipantId | None = None,
        timeout: float = DEFAULT_WAIT,
    ) -> InstructionResult:
        """Wait until an instruction (see `status`) is in a final block, attested by a quorum."""
        return await self._poll(instruction_id, sender, timeout, final=True)

    async def wait_ready(self, *, timeout: float = DEFAULT_WAIT) -> None:
        """Wait until our node answers and knows this bank (e.g. right after network start)."""
        deadline = time.monotonic() + timeout
        for pause in polling(deadline):
            try:
                await self._call(
                    self._requests.balances(""), budget(deadline, self.timeout), NO_RETRY
                )
                return
            except BridgeRpcError as error:
                if not waitable(error, Reason.UNKNOWN_SIGNER) or pause is None:
                    raise
            await asyncio.sleep(pause)

    async def watch(
        self, from_seq: int = 1, *, timeout: float | None = None
    ) -> AsyncIterator[HistoryEntry]:
        """Our settlements from `from_seq` on, then live as they are recorded, each seq once.

        Reconnects (from the last seq seen + 1) when the stream breaks. Runs until the caller
        stops iterating, or raises when `timeout` seconds have passed.
        """
        next_seq = max(1, from_seq)
        deadline = None if timeout is None else time.monotonic() + timeout
        pauses = self.retry.backoffs()
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._stub.WatchSettlements(self._requests.watch(next_seq), timeout=remaining)
            failure = BridgeRpcError(Reason.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "ended")
            try:
                async for event in call:
                    if event.entry.seq < next_seq:
                        continue  # at-least-once delivery: already yielded
                    entry = await self._entry(event, None)
                    next_seq = entry.seq + 1
                    pauses = self.retry.backoffs()
                    yield entry
            except grpc.RpcError as error:
                failure = BridgeRpcError.from_rpc_error(error)
                if not failure.retryable:
                    raise failure from error
            finally:
                call.cancel()
            pause = next(pauses, None)
            if pause is None or (deadline is not None and time.monotonic() + pause > deadline):
                raise failure
            await asyncio.sleep(pause)

    # ------------------------------------------------------------------ transport

    async def _call(
        self, rpc: Rpc[T], timeout: float | None, retry: RetryPolicy | None = None
    ) -> T:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        pauses = (retry or self.retry).backoffs()
        method = getattr(self._stub, rpc.name)
        while True:
            try:
                response = await method(rpc.request, timeout=remaining(deadline))
                return rpc.read(response)
            except grpc.RpcError as error:
                failure = BridgeRpcError.from_rpc_error(error)
                pause = next_pause(failure, pauses, deadline)
                if pause is None:
                    raise failure from error
            await asyncio.sleep(pause)

    async def _poll(
        self,
        instruction_id: InstructionId,
        sender: ParticipantId | None,
        timeout: float,
        final: bool,
    ) -> InstructionResult:
        deadline = time.monotonic() + timeout
        for pause in polling(deadline):
            rpc = self._requests.status(instruction_id, sender)
            try:
                result = await self._call(rpc, budget(deadline, self.timeout), NO_RETRY)
            except BridgeRpcError as error:
                if not waitable(error, *NOT_RECORDED_YET) or pause is None:
                    raise
            else:
                if result.final or not final:
                    return result
                if pause is None:
                    raise not_final(result, timeout)
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: polling ends by returning or raising")

    async def _entry(self, event: types.EntryEvent, timeout: float | None) -> HistoryEntry:
        entry = HistoryEntry.from_proto(event, self._proposals.get)
        missing = self._proposals.missing(entry.instruction)
        if missing is not None and entry.legs == () and entry.outcome is Outcome.SETTLED:
            try:
                proposal = (await self.pvp(*missing, timeout=timeout)).proposal
            except BridgeRpcError:
                return entry  # legs unknown; the entry itself is still right
            self._proposals.note(proposal)
            entry = replace(entry, legs=proposal.legs())
        self._proposals.note(entry.instruction)
        return entry
