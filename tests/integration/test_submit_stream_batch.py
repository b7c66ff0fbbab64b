"""Batches of instructions on `CentralBank.SubmitStream`, over real gRPC on loopback.

A network (bridge and four central bank nodes) runs on loopback. A bank sends its node one
message carrying a batch of `instructions`: the node answers with one message whose `results`
hold one status or refusal per instruction, in order. Bad instructions (a forged signature, a
bank of another central bank, an id used twice with different bodies, an id too long for the
field bounds) fail alone and change nothing; the good ones settle; conservation holds. A batch
past the documented maximum is refused whole, a retried batch answers duplicates with the
original seqs, and the same works in raw protobuf bytes over a generic channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import FIELD_BOUNDS
from bridge.domain import Pay
from bridge.errors import Reason
from tests.conftest import RPC_TIMEOUT, VALID_FOR_MS, cross_border_dual_pvp, new_id, now_ms

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

SUBMIT_STREAM = "/bridge.v1.CentralBank/SubmitStream"
MAX_BATCH = FIELD_BOUNDS["instructions"].max_length  # documented: 1,024


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """ICBC and HSBCHK hold some of their own currency."""
    for bank in ("ICBC", "HSBCHK"):
        assert live.issue(bank, 10_000_000).receipt.outcome == types.OUTCOME_ISSUED


def pay(
    sender: str = "ICBC", payee: str = "BOCQ", amount: int = 1_000, instruction_id: str = ""
) -> Pay:
    currency = "HKD" if sender == "HSBCHK" else "CNY"
    return Pay(
        instruction_id or new_id("pay"),
        sender,
        now_ms() + VALID_FOR_MS,
        payee,
        currency,
        amount,
        "INV-CQ-2025-0117",
        signed_at=now_ms(),
    )


def submit(
    live: LiveNetwork, requests: Iterable[cb_pb.BankSubmitRequest]
) -> list[cb_pb.BankSubmitResponse]:
    """Every response of one SubmitStream call to PBOC's node carrying `requests`."""
    stream = live.node("PBOC").SubmitStream(iter(list(requests)), timeout=RPC_TIMEOUT)
    return list(stream)


def batch(correlation_id: int, items: Sequence[types.SignedInstruction]) -> cb_pb.BankSubmitRequest:
    return cb_pb.BankSubmitRequest(correlation_id=correlation_id, instructions=items)


def pay_id(message: types.SignedInstruction) -> str:
    instruction_id: str = message.instruction.instruction_id
    return instruction_id


def refusal(result: cb_pb.BankSubmitResult) -> tuple[str, str]:
    assert result.WhichOneof("result") == "refusal", result
    return result.refusal.code, result.refusal.reason


def test_batch_answers_each_instruction_in_order_and_bad_ones_fail_alone(
    live: LiveNetwork,
) -> None:
    """One message of good and bad instructions: one result each, in order; only good ones act."""
    before = live.snapshot()
    first, cross, last = pay(amount=1_100), cross_border_dual_pvp(), pay(amount=1_300)
    forged = pay(amount=1_700)
    foreign = pay(sender="HSBCHK", payee="BOCHK", amount=1_900)
    conflict = pay(amount=2_300, instruction_id=first.instruction_id)  # same id, other body
    too_long = live.signed(pay(amount=2_900))
    long_id = new_id("long") + "-" + "x" * 80
    too_long.instruction.instruction_id = long_id
    items = [
        live.signed(first),
        live.signed(forged, signer="BOCQ"),
        live.dual_signed(cross),
        live.signed(foreign),
        live.signed(conflict),
        too_long,
        live.signed(last),
    ]
    (response,) = submit(live, [batch(7, items)])
    assert response.correlation_id == 7
    assert response.WhichOneof("result") is None
    results = response.results
    assert len(results) == len(items)
    for settled in (results[0], results[2], results[6]):
        assert settled.status.receipt.outcome == types.OUTCOME_SETTLED, settled
        assert not settled.status.receipt.duplicate
    assert refusal(results[1]) == ("UNAUTHENTICATED", Reason.BAD_SIGNATURE.value)
    assert refusal(results[3]) == ("PERMISSION_DENIED", Reason.NOT_HOME_CENTRAL_BANK.value)
    assert refusal(results[4]) == ("ALREADY_EXISTS", Reason.ID_CONFLICT.value)
    assert refusal(results[5]) == ("INVALID_ARGUMENT", Reason.FIELD_TOO_LONG.value)
    assert "instruction_id" in results[5].refusal.message
    seqs = [results[i].status.receipt.seq for i in (0, 2, 6)]
    assert len(set(seqs)) == 3
    # only the three good ones acted: the ICBC -> BOCQ payments and the dual PvP's legs
    after = live.snapshot()
    paid = first.amount + last.amount
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - paid - 30_000
    assert after.available("BOCQ", "CNY") == before.available("BOCQ", "CNY") + paid
    assert after.available("HSBCHK", "HKD") == before.available("HSBCHK", "HKD") - 32_550
    assert after.available("BOCHK", "HKD") == before.available("BOCHK", "HKD")
    assert after.entries == before.entries + 3
    for refused in (forged, foreign):
        assert live.entries_of_instruction(refused.sender, refused.instruction_id) == 0
    assert live.entries_of_instruction("ICBC", first.instruction_id) == 1
    live.assert_conserved(after)
    # the node records the refusals it decided, the one at the edge included
    wanted = {forged.instruction_id, foreign.instruction_id, long_id[:64] + "…"}

    page = live.admin("PBOC").ListRefusals(
        cb_pb.ListRefusalsRequest(limit=500, sender=""),
        metadata=live.admin_metadata("PBOC"),
        timeout=RPC_TIMEOUT,
    )
    assert wanted <= {row.instruction_id for row in page.refusals}


def test_batches_and_single_requests_share_one_stream(live: LiveNetwork) -> None:
    """A stream mixing a batch and single requests answers each by its correlation id."""
    alone, batched = pay(amount=3_100), [pay(amount=3_200), pay(amount=3_300)]
    requests = [
        cb_pb.BankSubmitRequest(correlation_id=1, instruction=live.signed(alone)),
        batch(2, [live.signed(body) for body in batched]),
    ]
    replies = {r.correlation_id: r for r in submit(live, requests)}
    assert sorted(replies) == [1, 2]
    assert replies[1].status.receipt.outcome == types.OUTCOME_SETTLED
    assert not replies[1].results
    assert [r.status.receipt.outcome for r in replies[2].results] == [types.OUTCOME_SETTLED] * 2


def test_retried_batch_answers_duplicates_with_the_original_seqs(live: LiveNetwork) -> None:
    """The same batch sent again: every result is a duplicate with its first seq; no new entry."""
    items = [live.signed(pay(amount=4_000 + n)) for n in range(3)] + [
        live.dual_signed(cross_border_dual_pvp())
    ]
    (first,) = submit(live, [batch(1, items)])
    assert all(r.status.receipt.outcome == types.OUTCOME_SETTLED for r in first.results)
    before = live.snapshot()
    (again,) = submit(live, [batch(2, items)])
    assert [r.status.receipt.seq for r in again.results] == [
        r.status.receipt.seq for r in first.results
    ]
    assert all(r.status.receipt.duplicate for r in again.results), again
    assert live.snapshot() == before


def test_too_large_batch_is_refused_whole_and_the_stream_goes_on(live: LiveNetwork) -> None:
    """A batch of 1,025 instructions: one INVALID_ARGUMENT refusal, nothing done; next served."""
    one = live.signed(pay(amount=5_000))
    after_it = pay(amount=5_100)
    before = live.snapshot()
    requests = [
        batch(1, [one] * (MAX_BATCH + 1)),
        cb_pb.BankSubmitRequest(correlation_id=2, instruction=live.signed(after_it)),
    ]
    replies = {r.correlation_id: r for r in submit(live, requests)}
    refused = replies[1]
    assert not refused.results
    assert refused.refusal.code == "INVALID_ARGUMENT"
    assert refused.refusal.reason == Reason.FIELD_TOO_LONG.value
    assert f"at most {MAX_BATCH}" in refused.refusal.message
    assert live.entries_of_instruction("ICBC", pay_id(one)) == 0
    assert replies[2].status.receipt.outcome == types.OUTCOME_SETTLED
    after = live.snapshot()
    assert after.entries == before.entries + 1
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - after_it.amount


def test_batch_of_instruction_and_instructions_is_refused_whole(live: LiveNetwork) -> None:
    """A request carrying both `instruction` and `instructions` is refused MALFORMED, whole."""
    alone, batched = live.signed(pay(amount=6_000)), live.signed(pay(amount=6_100))
    before = live.snapshot()
    request = cb_pb.BankSubmitRequest(correlation_id=3, instruction=alone, instructions=[batched])
    (reply,) = submit(live, [request])
    assert not reply.results
    assert (reply.refusal.code, reply.refusal.reason) == ("INVALID_ARGUMENT", "MALFORMED")
    assert live.snapshot() == before


# ---------------------------------------------------------------------------- raw bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_batch(correlation_id: int, items: Sequence[bytes]) -> bytes:
    """A BankSubmitRequest written by hand: field 1 varint, field 3 once per instruction."""
    out = b"\x08" + _varint(correlation_id)
    for item in items:
        out += b"\x1a" + _varint(len(item)) + item
    return out


def test_raw_batch_over_a_generic_channel(live: LiveNetwork) -> None:
    """Hand-written batch bytes: results in order; a batch that does not decode is refused whole."""
    good = [pay(amount=7_000), pay(amount=7_100)]
    forged = pay(amount=7_200)
    items = [
        live.signed(good[0]).SerializeToString(),
        live.signed(forged, signer="BOCQ").SerializeToString(),
        live.signed(good[1]).SerializeToString(),
    ]
    broken_body = pay(amount=7_300)
    broken = live.signed(broken_body).SerializeToString()
    marker = broken_body.instruction_id.encode()
    broken = broken.replace(marker, b"\xff" * len(marker))  # invalid UTF-8 inside one item
    raw = live.channel(live.address("PBOC")).stream_stream(
        SUBMIT_STREAM, request_serializer=None, response_deserializer=None
    )
    before = live.snapshot()
    answers = list(
        raw(iter([raw_batch(41, items), raw_batch(42, [items[0], broken])]), timeout=RPC_TIMEOUT)
    )
    replies = {r.correlation_id: r for r in map(cb_pb.BankSubmitResponse.FromString, answers)}
    assert sorted(replies) == [41, 42]
    results = replies[41].results
    assert [r.WhichOneof("result") for r in results] == ["status", "refusal", "status"]
    assert results[1].refusal.reason == Reason.BAD_SIGNATURE.value
    assert all(r.status.receipt.outcome == types.OUTCOME_SETTLED for r in (results[0], results[2]))
    assert not replies[42].results
    assert replies[42].refusal.code == "INVALID_ARGUMENT"
    assert replies[42].refusal.reason == Reason.MALFORMED.value
    after = live.snapshot()
    assert after.entries == before.entries + 2
    paid = sum(body.amount for body in good)
    assert after.available("ICBC", "CNY") == before.available("ICBC", "CNY") - paid
    assert live.entries_of_instruction("ICBC", forged.instruction_id) == 0
    live.assert_conserved(after)


def test_raw_single_instruction_request_is_answered_alone(live: LiveNetwork) -> None:
    """The one-instruction shape in raw bytes (field 2) still gets `status`, no `results`."""
    encoded = live.signed(pay(amount=8_000)).SerializeToString()
    data = b"\x08\x05\x12" + _varint(len(encoded))
    raw = live.channel(live.address("PBOC")).stream_stream(
        SUBMIT_STREAM, request_serializer=None, response_deserializer=None
    )
    (answer,) = list(raw(iter([data + encoded]), timeout=RPC_TIMEOUT))
    reply = cb_pb.BankSubmitResponse.FromString(answer)
    assert reply.correlation_id == 5
    assert reply.status.receipt.outcome == types.OUTCOME_SETTLED
    assert not reply.results
