"""Peer endorsements over `EndorseStream`, between real central bank nodes on loopback.

Dual PvPs between banks of PBOC and HKMA settle with HKMA's endorsement obtained over the
stream PBOC's node keeps open; HKMA's node killed with requests outstanding leaves PBOC's banks
with UNAVAILABLE (resubmit), and the resubmission settles exactly once once it is back; the
stream is refused to anyone but a peer central bank node, and bad bytes on it change nothing.
The outsider's view is a generic client sending raw protobuf bytes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp, Envelope
from bridge.errors import Reason, Refused
from bridge.signing import endorse
from participants.central_bank.channels import node_channel
from participants.central_bank.peer_endorser import PeerEndorser
from tests.conftest import (
    RPC_TIMEOUT,
    cross_border_dual_pvp,
    reason_of,
    wait_for,
)

if TYPE_CHECKING:
    from participants.launcher import Network
    from tests.conftest import LiveNetwork

ENDORSE_STREAM = "/bridge.v1.CentralBank/EndorseStream"
ENDORSE_BATCH = "/bridge.v1.CentralBank/EndorseDualPvps"
FALLBACK_LINE = b"no endorsement stream"


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """Working balances for the two banks that trade."""
    live.issue("ICBC", 50_000_000)
    live.issue("HSBCHK", 50_000_000)


def dual(amount: int = 10_000) -> DualPvp:
    """ICBC (PBOC) pays CNY, HSBCHK (HKMA) pays HKD: each leg needs its own central bank."""
    return cross_border_dual_pvp(amount, amount * 2, "endorse stream")


def for_hkma(live: LiveNetwork, body: DualPvp | None = None) -> types.SignedInstruction:
    """Both banks' signatures and PBOC's endorsement of ICBC's leg: what PBOC's node sends."""
    envelope = wire.envelope_from_proto(live.dual_signed(body or dual()))
    return wire.envelope_to_proto(endorse(envelope, "ICBC", "PBOC", live.key("PBOC")))


def raw_stream(live: LiveNetwork, metadata: Any = ()) -> Any:
    """EndorseStream on HKMA's node as an outside client calls it: raw bytes each way."""
    call = live.channel(live.address("HKMA")).stream_stream(
        ENDORSE_STREAM, request_serializer=None, response_deserializer=None
    )
    return lambda requests: call(requests, metadata=metadata, timeout=RPC_TIMEOUT)


def status_of(responses: Iterator[bytes]) -> grpc.RpcError:
    """Read the stream to its end, which must be an error; return it."""
    with pytest.raises(grpc.RpcError) as info:
        for _ in responses:
            pass
    error: grpc.RpcError = info.value
    return error


# ---------------------------------------------------------------------------- settling


async def test_peer_endorser_gets_endorsements_over_the_stream_and_they_settle(
    live: LiveNetwork,
) -> None:
    """PeerEndorser over a stream-only stub and PBOC's signed channel: HKMA's node endorses
    HSBCHK's legs (refusing one it did not sign), and the bridge settles the endorsed ones."""
    channel = node_channel(
        live.config, live.address("HKMA"), "PBOC", audience="HKMA", key=live.key("PBOC")
    )

    class StreamOnly:  # no EndorseDualPvps: a fall back to the unary call would fail
        EndorseStream = cb_grpc.CentralBankStub(channel).EndorseStream

    try:
        endorser = PeerEndorser(StreamOnly(), "PBOC", live.key("PBOC"), timeout=RPC_TIMEOUT)  # type: ignore[arg-type]
        bodies = [dual(1_000 + i) for i in range(3)]
        envelopes = [wire.envelope_from_proto(live.dual_signed(body)) for body in bodies]
        unsigned = Envelope.of(bodies[2])  # ICBC's signature only: HSBCHK never signed it
        unsigned = unsigned.with_signature(envelopes[2].party_signature("ICBC"))  # type: ignore[arg-type]
        results = await endorser.endorse_many(
            [(envelopes[0], "ICBC"), (envelopes[1], "ICBC"), (unsigned, "ICBC")]
        )
        await endorser.close()
    finally:
        await channel.close()
    assert isinstance(results[2], Refused)
    assert results[2].reason is Reason.MISSING_SIGNATURE
    before = live.balance("ICBC", "CNY")
    for envelope, result in zip(envelopes[:2], results[:2], strict=True):
        assert not isinstance(result, Refused), result
        ours, theirs = result
        assert (theirs.signer, theirs.endorses) == ("HKMA", "HSBCHK")
        complete = envelope.with_signature(ours).with_signature(theirs)
        receipt = live.bridge.SubmitOne(wire.envelope_to_proto(complete), timeout=RPC_TIMEOUT)
        assert receipt.outcome == types.OUTCOME_SETTLED
        assert live.entries_of_instruction("ICBC", envelope.body.instruction_id) == 1
    assert live.balance("ICBC", "CNY")[0] == before[0] - 1_000 - 1_001


def test_dual_pvps_between_two_nodes_settle_through_the_stream(
    live: LiveNetwork, network: Network
) -> None:
    """A batch of dual PvPs sent to PBOC's node settles (HKMA's endorsements over the stream,
    not the unary fall-back): each once in the log, the balances moved by their amounts."""
    bodies = [dual(2_000 + i) for i in range(8)]
    before = live.balance("HSBCHK", "CNY")
    request = cb_pb.BankSubmitRequest(
        correlation_id=1, instructions=[live.dual_signed(b) for b in bodies]
    )
    (response,) = live.node("PBOC").SubmitStream(iter([request]), timeout=RPC_TIMEOUT)
    assert [r.WhichOneof("result") for r in response.results] == ["status"] * len(bodies)
    assert {r.status.receipt.outcome for r in response.results} == {types.OUTCOME_SETTLED}
    for body in bodies:
        assert live.entries_of_instruction("ICBC", body.instruction_id) == 1
    received = sum(b.pay_amount for b in bodies)
    assert live.balance("HSBCHK", "CNY")[0] == before[0] + received
    assert FALLBACK_LINE not in network.central_banks["PBOC"].log_path.read_bytes()


# ---------------------------------------------------------------------------- who may call


def test_endorse_stream_is_refused_to_anyone_but_a_peer_node_before_any_message(
    live: LiveNetwork,
) -> None:
    """No credentials, a bank's key under PBOC's name, or headers for the bridge: the stream
    ends UNAUTHENTICATED / CALLER_NOT_AUTHENTICATED exactly as EndorseDualPvps does, without
    the caller sending any message; nothing changes."""
    before = live.snapshot()
    unary = live.channel(live.address("HKMA")).unary_unary(
        ENDORSE_BATCH, request_serializer=None, response_deserializer=None
    )
    batch = cb_pb.EndorseDualPvpsRequest(instructions=[for_hkma(live)]).SerializeToString()
    for metadata in (
        (),
        live.signed_call("PBOC", "HKMA", ENDORSE_STREAM, signer="ICBC"),
        live.signed_call("PBOC", "bridge", ENDORSE_STREAM),
    ):
        silent = threading.Event()

        def nothing_sent(event: threading.Event = silent) -> Iterator[bytes]:
            event.wait(RPC_TIMEOUT)  # sends no message at all until the call is over
            yield from ()

        error = status_of(raw_stream(live, metadata)(nothing_sent()))
        silent.set()
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert reason_of(error) is Reason.CALLER_NOT_AUTHENTICATED
        unary_metadata = tuple((k, v) for k, v in metadata)
        with pytest.raises(grpc.RpcError) as unary_error:
            unary(batch, metadata=unary_metadata, timeout=RPC_TIMEOUT)
        assert unary_error.value.code() == error.code()
        assert reason_of(unary_error.value) is reason_of(error)
    assert live.snapshot() == before


def test_endorse_stream_answers_a_peer_node(live: LiveNetwork) -> None:
    """PBOC's signed headers open the stream: a raw request is answered under its
    correlation id with HKMA's endorsement of HSBCHK's leg."""
    request = cb_pb.EndorseStreamRequest(correlation_id=5, instructions=[for_hkma(live)])
    metadata = live.signed_call("PBOC", "HKMA", ENDORSE_STREAM)
    (raw,) = list(raw_stream(live, metadata)(iter([request.SerializeToString()])))
    response = cb_pb.EndorseStreamResponse.FromString(raw)
    assert response.correlation_id == 5
    (result,) = response.results
    assert result.WhichOneof("result") == "endorsement"
    assert (result.endorsement.signer, result.endorsement.endorses) == ("HKMA", "HSBCHK")


# ---------------------------------------------------------------------------- bad bytes


def test_undecodable_bytes_end_the_stream_invalid_argument_and_change_nothing(
    live: LiveNetwork,
) -> None:
    """Bytes that do not decode, with no correlation id to answer them by: the stream ends
    INVALID_ARGUMENT / MALFORMED; with one readable, that request alone is refused MALFORMED
    and the next is answered; nothing changes either way."""
    metadata = live.signed_call("PBOC", "HKMA", ENDORSE_STREAM)
    before = live.snapshot()
    error = status_of(raw_stream(live, metadata)(iter([b"\xff\xff\xff\xff"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) is Reason.MALFORMED
    garbled = b"\x08\x07" + b"\x12\x03abc"  # correlation id 7, then an instruction in pieces
    good = cb_pb.EndorseStreamRequest(correlation_id=8, instructions=[for_hkma(live)])
    metadata = live.signed_call("PBOC", "HKMA", ENDORSE_STREAM)
    raws = list(raw_stream(live, metadata)(iter([garbled, good.SerializeToString()])))
    responses = {
        r.correlation_id: r for r in (cb_pb.EndorseStreamResponse.FromString(b) for b in raws)
    }
    assert sorted(responses) == [7, 8]
    assert responses[7].refusal.reason == Reason.MALFORMED.value
    assert not responses[7].results
    assert responses[8].results[0].WhichOneof("result") == "endorsement"
    assert live.snapshot() == before


def test_a_batch_past_its_bound_is_refused_whole_and_the_stream_goes_on(
    live: LiveNetwork,
) -> None:
    """1,025 instructions in one request: answered by its correlation id FIELD_TOO_LONG,
    nothing endorsed; an instruction out of the field bounds in a batch is refused in its
    place while the others are endorsed."""
    instruction = for_hkma(live)
    too_many = cb_pb.EndorseStreamRequest(correlation_id=1, instructions=[instruction] * 1025)
    long_id = types.SignedInstruction()
    long_id.CopyFrom(instruction)
    long_id.instruction.instruction_id = "x" * 500
    mixed = cb_pb.EndorseStreamRequest(correlation_id=2, instructions=[long_id, instruction])
    metadata = live.signed_call("PBOC", "HKMA", ENDORSE_STREAM)
    requests = iter([too_many.SerializeToString(), mixed.SerializeToString()])
    raws = list(raw_stream(live, metadata)(requests))
    responses = {
        r.correlation_id: r for r in (cb_pb.EndorseStreamResponse.FromString(b) for b in raws)
    }
    assert responses[1].refusal.reason == Reason.FIELD_TOO_LONG.value
    assert not responses[1].results
    first, second = responses[2].results
    assert first.refusal.reason == Reason.FIELD_TOO_LONG.value
    assert second.WhichOneof("result") == "endorsement"


# ---------------------------------------------------------------------------- peer down


def submit(live: LiveNetwork, signed: types.SignedInstruction) -> types.InstructionStatus:
    status: types.InstructionStatus = live.node("PBOC").SubmitDualPvp(signed, timeout=30)
    return status


def test_a_peer_node_killed_mid_run_leaves_the_legs_not_decided_then_they_settle_once(
    live: LiveNetwork, network: Network
) -> None:
    """HKMA's node paused with a PvP outstanding, then killed: PBOC's banks hear UNAVAILABLE
    (retryable), for that PvP and for those sent while it is down; once it is back, the same
    instructions resubmitted settle, each exactly once."""
    assert submit(live, live.dual_signed(dual())).receipt.outcome == types.OUTCOME_SETTLED
    hkma = network.central_banks["HKMA"]
    signed = [live.dual_signed(dual(3_000 + i)) for i in range(3)]
    before = live.balance("HSBCHK", "CNY")
    answers: list[Any] = []
    try:
        hkma.signal(signal.SIGSTOP)  # the stream stays open; nothing answers on it
        outstanding = threading.Thread(
            target=lambda: answers.append(_outcome(live, signed[0])), daemon=True
        )
        outstanding.start()
        time.sleep(1.0)  # the request is on the stream (or not: UNAVAILABLE either way)
        hkma.kill()
        outstanding.join(30)
        answers.extend(_outcome(live, s) for s in signed[1:])
        for answer in answers:
            assert isinstance(answer, grpc.RpcError), answer
            assert answer.code() == grpc.StatusCode.UNAVAILABLE, answer.details()
            assert reason_of(answer) is Reason.UNAVAILABLE
            assert reason_of(answer).retryable
    finally:
        network.restart_central_bank("HKMA")
    for item in signed:

        def settled(item: types.SignedInstruction = item) -> types.InstructionStatus | None:
            outcome = _outcome(live, item)
            return None if isinstance(outcome, grpc.RpcError) else outcome

        status = wait_for(settled, timeout=60, what="the resubmission to settle", every=0.5)
        assert status.receipt.outcome == types.OUTCOME_SETTLED
        again = submit(live, item)
        assert again.receipt.duplicate
        assert live.entries_of_instruction("ICBC", item.instruction.instruction_id) == 1
    received = sum(pay_amount_of(s) for s in signed)
    assert live.balance("HSBCHK", "CNY")[0] == before[0] + received


def _outcome(live: LiveNetwork, signed: types.SignedInstruction) -> Any:
    try:
        return submit(live, signed)
    except grpc.RpcError as error:
        return error


def pay_amount_of(signed: types.SignedInstruction) -> int:
    amount: int = signed.instruction.pvp_dual.pay_amount
    return amount
