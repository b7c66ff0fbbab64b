"""The bank SDK without a network: signed requests, results, errors and retry pauses."""

from __future__ import annotations

import pickle
import re
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import participants.sdk as sdk
from bridge import wire
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import DualPvp, Outcome, Pay, party_message
from bridge.errors import Reason
from bridge.status import refusal_from_rpc_error
from participants.sdk import (
    AsyncBankClient,
    BridgeRpcError,
    InstructionResult,
    NotDecided,
    Refusal,
    RetryPolicy,
    SignedDualPvp,
)
from participants.sdk._connection import call_with_retry
from participants.sdk._requests import BankRequests, new_instruction_id

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NOW = 1_750_000_000_000


def requests(bank: str = "ICBC", key: PrivateKey | None = None) -> BankRequests:
    return BankRequests(bank, key or PrivateKey.generate(), clock=lambda: NOW)


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpc ships no types
    """A failed call as grpc reports it: code, details and trailing metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        reason: str | None = None,
        *,
        retry_delay: float | None = None,
    ) -> None:
        self._code, self._details = code, details
        self._metadata: tuple[tuple[str, bytes], ...] = ()
        packed = []
        if reason is not None:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cbdc-bridge.v1"))
            packed.append(detail)
        if retry_delay is not None:
            hint = error_details_pb2.RetryInfo()
            hint.retry_delay.FromMilliseconds(round(retry_delay * 1000))
            detail = any_pb2.Any()
            detail.Pack(hint)
            packed.append(detail)
        if packed:
            status = status_pb2.Status(code=code.value[0], message=details, details=packed)
            self._metadata = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata


def test_public_names_are_sorted_and_importable() -> None:
    """participants.sdk exports a sorted __all__ (constants, classes, functions) of names it
    really has."""
    assert sdk.__all__ == sorted(sdk.__all__, key=lambda n: (not n.isupper(), n.islower(), n))
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_generated_ids_fit_the_bridge_id_pattern() -> None:
    """Generated instruction ids are unique, at most 64 characters and match the pattern."""
    ids = {new_instruction_id() for _ in range(1000)} | {new_instruction_id("x" * 70)}
    assert len(ids) == 1001
    assert all(ID_PATTERN.fullmatch(i) for i in ids)


def test_pay_is_signed_by_the_bank_over_the_canonical_body() -> None:
    """The Pay request carries the bank's signature verifying over the canonical body."""
    key = PrivateKey.generate()
    rpc = requests(key=key).pay("BOCQ", "CNY", 100, "INV-1", None, None)
    assert rpc.name == "Pay"
    assert rpc.method == "/bridge.v1.CentralBank/Pay"
    envelope = wire.envelope_from_proto(rpc.request)  # type: ignore[arg-type]
    body = envelope.body
    assert isinstance(body, Pay)
    assert (body.sender, body.payee, body.amount, body.valid_until) == (
        "ICBC",
        "BOCQ",
        100,
        NOW + 300_000,
    )
    (signature,) = envelope.signatures
    assert signature.signer == "ICBC"
    assert FastVerifier().verify(
        key.public_key, party_message(envelope.body_bytes), signature.value
    )


def test_repeating_an_instruction_resends_the_same_signed_message() -> None:
    """Same id and terms, even a later validity, give byte-identical requests; other terms
    a new signature."""
    bank = requests()
    first = bank.pay("BOCQ", "CNY", 100, "", "pay-1", None).request
    later = bank.pay("BOCQ", "CNY", 100, "", "pay-1", NOW + 999_999).request
    other = bank.pay("BOCQ", "CNY", 101, "", "pay-1", None).request
    assert first.SerializeToString() == later.SerializeToString()
    assert other.SerializeToString() != first.SerializeToString()


def test_malformed_instruction_is_refused_before_signing() -> None:
    """A body the bridge would refuse raises BridgeRpcError with the bridge's code."""
    with pytest.raises(BridgeRpcError) as info:
        requests().pay("ICBC", "CNY", 100, "", None, None)
    assert info.value.reason is Reason.SAME_PARTY
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_dual_pvp_is_signed_from_our_side_for_the_submitter() -> None:
    """sign_dual_pvp makes the counterparty the sender, with our legs the other way round."""
    offer = requests("HSBCHK").sign_dual_pvp(
        "ICBC", ("HKD", 1_100), ("CNY", 1_000), "1.1", "INV-9", None, None
    )
    body = offer.body
    assert isinstance(body, DualPvp)
    assert (body.sender, body.counterparty) == ("ICBC", "HSBCHK")
    assert (body.pay_currency, body.pay_amount) == ("CNY", 1_000)
    assert (body.receive_currency, body.receive_amount) == ("HKD", 1_100)
    assert SignedDualPvp.from_json(offer.to_json()) == offer
    rpc = requests("ICBC").submit_dual_pvp(offer)
    signers = [s.signer for s in wire.envelope_from_proto(rpc.request).signatures]  # type: ignore[arg-type]
    assert signers == ["HSBCHK", "ICBC"]
    with pytest.raises(BridgeRpcError) as info:
        requests("BOCQ").submit_dual_pvp(offer)
    assert info.value.reason is Reason.NOT_A_PARTY


def test_result_reads_the_receipt_and_finality() -> None:
    """InstructionResult carries the receipt's outcome, seq, duplicate flag and finality."""
    receipt = types.Receipt(
        sender="ICBC",
        instruction_id="pay-1",
        body_hash=b"\x02" * 32,
        outcome=types.OUTCOME_SETTLED,
        seq=12,
        duplicate=True,
    )
    result = InstructionResult.from_proto(
        types.InstructionStatus(receipt=receipt, block_height=3, final=True)
    )
    assert result == InstructionResult(
        "ICBC", "pay-1", Outcome.SETTLED, 12, 3, True, True, b"\x02" * 32
    )
    assert result.settled


def test_malformed_answer_raises_bridge_rpc_error() -> None:
    """An answer that is not a valid receipt raises BridgeRpcError (MALFORMED)."""
    with pytest.raises(BridgeRpcError) as info:
        InstructionResult.from_proto(types.InstructionStatus())
    assert info.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("error", "reason", "transient"),
    [
        (
            FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "no", "INSUFFICIENT_FUNDS"),
            Reason.INSUFFICIENT_FUNDS,
            False,
        ),
        (
            FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "late", "INSTRUCTION_EXPIRED"),
            Reason.INSTRUCTION_EXPIRED,
            False,
        ),
        (
            FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            Reason.OUTCOME_UNKNOWN,
            True,
        ),
        (FakeRpcError(grpc.StatusCode.CANCELLED, "Cancelled"), Reason.OUTCOME_UNKNOWN, True),
        (
            FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", "OVERLOADED"),
            Reason.OVERLOADED,
            True,
        ),
        (
            FakeRpcError(grpc.StatusCode.UNAVAILABLE, "commit failed", "OUTCOME_UNKNOWN"),
            Reason.OUTCOME_UNKNOWN,
            True,
        ),
        (
            FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "other body", "ID_CONFLICT"),
            Reason.ID_CONFLICT,
            False,
        ),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"), Reason.UNAVAILABLE, True),
        (
            FakeRpcError(grpc.StatusCode.UNAVAILABLE, "link broke", "UNAVAILABLE"),
            Reason.UNAVAILABLE,
            True,
        ),
        (FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "token"), Reason.BAD_SIGNATURE, False),
    ],
)
def test_failed_calls_map_to_reason_and_transience(
    error: FakeRpcError, reason: Reason, transient: bool
) -> None:
    """The reason comes from the ErrorInfo detail; a client-side deadline or a cancelled call is
    not decided (OUTCOME_UNKNOWN), never a refusal; each error is exactly one of the two kinds."""
    failure = BridgeRpcError.from_rpc_error(error)
    assert failure.reason is reason
    assert failure.code is error.code()
    assert failure.transient is transient
    assert failure.retryable is transient
    assert isinstance(failure, NotDecided if transient else Refusal)
    assert not isinstance(failure, Refusal if transient else NotDecided)


def test_errors_keep_their_kind_through_pickling() -> None:
    """A NotDecided error survives pickling (e.g. across worker processes) with its hint."""
    failure = BridgeRpcError(
        Reason.OVERLOADED, grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", retry_after=0.5
    )
    again = pickle.loads(pickle.dumps(failure))
    assert isinstance(again, NotDecided)
    assert (again.reason, again.code, again.message, again.retry_after) == (
        Reason.OVERLOADED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "shed",
        0.5,
    )


def test_retry_info_detail_is_read_as_the_pushback_hint() -> None:
    """RESOURCE_EXHAUSTED with a RetryInfo detail gives retry_after in seconds."""
    error = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", "OVERLOADED", retry_delay=0.25)
    failure = BridgeRpcError.from_rpc_error(error)
    assert failure.retry_after == pytest.approx(0.25)
    assert isinstance(failure, NotDecided)
    assert (
        BridgeRpcError.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x")).retry_after
        is None
    )


class ScriptedMethod:
    """A unary method that fails with the scripted errors in turn, then answers `reply`."""

    def __init__(self, *errors: FakeRpcError, reply: object = "ok") -> None:
        self.errors = list(errors)
        self.reply = reply
        self.requests: list[object] = []

    def __call__(self, request: object, *, timeout: float, metadata: object = ()) -> object:
        assert timeout > 0
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return self.reply


def test_not_decided_calls_are_retried_with_the_same_request() -> None:
    """CANCELLED, RESOURCE_EXHAUSTED (pushback 0.3 s) and UNAVAILABLE are retried with the very
    same request; the server's hint replaces the backoff pause."""
    method = ScriptedMethod(
        FakeRpcError(grpc.StatusCode.CANCELLED, "Cancelled"),
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", "OVERLOADED", retry_delay=0.3),
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"),
    )
    request = types.Receipt(instruction_id="pay-7")
    pauses: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02)
    reply = call_with_retry(method, request, timeout=60, retry=policy, sleep=pauses.append)
    assert reply == "ok"
    assert method.requests == [request] * 4
    assert all(r is request for r in method.requests)
    assert len(pauses) == 3
    assert pauses[1] == pytest.approx(0.3)
    assert all(0 < p <= 0.02 for p in (pauses[0], pauses[2]))


@pytest.mark.parametrize(
    "error",
    [
        FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "no", "INSUFFICIENT_FUNDS"),
        FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "other body", "ID_CONFLICT"),
        FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "late", "INSTRUCTION_EXPIRED"),
        FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad", "BAD_SIGNATURE"),
    ],
)
def test_refusals_are_raised_after_one_attempt(error: FakeRpcError) -> None:
    """A refusal is final: one attempt, no pause, raised as a Refusal."""
    method = ScriptedMethod(error)
    pauses: list[float] = []
    with pytest.raises(Refusal) as info:
        call_with_retry(
            method, types.Receipt(), timeout=60, retry=RetryPolicy(), sleep=pauses.append
        )
    assert info.value.reason.value == str(refusal_from_rpc_error(error).reason)
    assert len(method.requests) == 1
    assert pauses == []


def test_retries_stop_after_max_attempts_with_the_last_not_decided_error() -> None:
    """A call that stays not decided is tried max_attempts times, then raises NotDecided."""
    method = ScriptedMethod(
        *[FakeRpcError(grpc.StatusCode.UNAVAILABLE, "still down", "CATCHING_UP")] * 10
    )
    pauses: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with pytest.raises(NotDecided) as info:
        call_with_retry(method, types.Receipt(), timeout=60, retry=policy, sleep=pauses.append)
    assert info.value.reason is Reason.CATCHING_UP
    assert len(method.requests) == 3
    assert len(pauses) == 2


def test_a_pushback_beyond_the_deadline_ends_the_retries() -> None:
    """A server hint longer than the time left raises at once rather than overrun the deadline."""
    method = ScriptedMethod(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", "OVERLOADED", retry_delay=120)
    )
    pauses: list[float] = []
    with pytest.raises(NotDecided):
        call_with_retry(
            method, types.Receipt(), timeout=5, retry=RetryPolicy(), sleep=pauses.append
        )
    assert (len(method.requests), pauses) == (1, [])


class AsyncScriptedStub:
    """An aio stub whose Pay fails with the scripted errors in turn, then settles."""

    def __init__(self, *errors: FakeRpcError) -> None:
        self.errors = list(errors)
        self.requests: list[bytes] = []

    async def Pay(  # noqa: N802  # the generated stub's method name
        self, request: types.SignedInstruction, *, timeout: float
    ) -> types.InstructionStatus:
        self.requests.append(request.SerializeToString())
        if self.errors:
            raise self.errors.pop(0)
        body = wire.envelope_from_proto(request).body
        receipt = types.Receipt(
            sender=body.sender,
            instruction_id=body.instruction_id,
            body_hash=b"\x01" * 32,
            outcome=types.OUTCOME_SETTLED,
            seq=1,
        )
        return types.InstructionStatus(receipt=receipt)


async def test_async_client_retries_cancelled_and_overloaded_with_the_same_bytes() -> None:
    """AsyncBankClient resends the very same signed instruction after CANCELLED and
    RESOURCE_EXHAUSTED, and raises a refusal after one attempt."""
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)
    async with AsyncBankClient(
        "127.0.0.1:9", "ICBC", PrivateKey.generate(), retry=policy
    ) as client:
        stub = AsyncScriptedStub(
            FakeRpcError(grpc.StatusCode.CANCELLED, "Cancelled"),
            FakeRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "shed", "OVERLOADED", retry_delay=0.001
            ),
        )
        client._stub = stub
        result = await client.pay("BOCQ", "CNY", 100)
        assert result.outcome is Outcome.SETTLED
        assert len(stub.requests) == 3
        assert len(set(stub.requests)) == 1
        refusing = AsyncScriptedStub(
            FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "no", "INSUFFICIENT_FUNDS")
        )
        client._stub = refusing
        with pytest.raises(Refusal):
            await client.pay("BOCQ", "CNY", 100)
        assert len(refusing.requests) == 1


def test_a_refused_other_body_does_not_hide_the_recorded_one() -> None:
    """pay(100, id X), pay(999, id X), pay(100, id X): the third resends the first's bytes, so
    the bridge recognises the resubmission (duplicate) rather than answering ID_CONFLICT."""
    bank = BankRequests(
        "ICBC", PrivateKey.generate(), clock=iter(range(NOW, NOW + 10_000, 100)).__next__
    )
    first = bank.pay("BOCQ", "CNY", 100, "", "pay-x", None).request
    other = bank.pay("BOCQ", "CNY", 999, "", "pay-x", None).request
    again = bank.pay("BOCQ", "CNY", 100, "", "pay-x", None).request
    assert other.SerializeToString() != first.SerializeToString()
    assert again.SerializeToString() == first.SerializeToString()


def test_retry_pauses_are_bounded_and_grow() -> None:
    """A policy of n attempts pauses n - 1 times, within its backoff limits."""
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.4, multiplier=2)
    pauses = list(policy.backoffs())
    assert len(pauses) == 5
    limits = [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(limit / 2 <= pause <= limit for pause, limit in zip(pauses, limits, strict=True))
    assert list(RetryPolicy(max_attempts=1).backoffs()) == []
