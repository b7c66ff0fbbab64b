"""The bank SDK without a network: signed requests, results, errors and retry pauses."""

from __future__ import annotations

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
from participants.sdk import BridgeRpcError, InstructionResult, RetryPolicy, SignedDualPvp
from participants.sdk._requests import BankRequests, new_instruction_id

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NOW = 1_750_000_000_000


def requests(bank: str = "ICBC", key: PrivateKey | None = None) -> BankRequests:
    return BankRequests(bank, key or PrivateKey.generate(), clock=lambda: NOW)


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpc ships no types
    """A failed call as grpc reports it: code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str | None = None) -> None:
        self._code, self._details = code, details
        self._metadata: tuple[tuple[str, bytes], ...] = ()
        if reason is not None:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cbdc-bridge.v1"))
            status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
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
            Reason.UNAVAILABLE,
            True,
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
    """The reason comes from the ErrorInfo detail; a client-side deadline is transient."""
    failure = BridgeRpcError.from_rpc_error(error)
    assert failure.reason is reason
    assert failure.code is error.code()
    assert failure.transient is transient


def test_retry_pauses_are_bounded_and_grow() -> None:
    """A policy of n attempts pauses n - 1 times, within its backoff limits."""
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.4, multiplier=2)
    pauses = list(policy.backoffs())
    assert len(pauses) == 5
    limits = [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(limit / 2 <= pause <= limit for pause, limit in zip(pauses, limits, strict=True))
    assert list(RetryPolicy(max_attempts=1).backoffs()) == []
