"""A flood of concurrent calls on one central bank node is answered, not dropped.

PBOC's node runs with a small in-flight bound (`--max-in-flight`), then 3,000 pre-signed
payments arrive at once from raw `grpc.aio` stubs. Every call must come back: settled (OK), or
shed at once with RESOURCE_EXHAUSTED carrying reason OVERLOADED, retryable=true and a
`google.rpc.RetryInfo` pushback hint; never CANCELLED or UNKNOWN. A shed payment left nothing in
the log; resubmitted under the same id it settles exactly once, and the node stays healthy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Pay
from bridge.errors import Reason
from bridge.status import refusal_from_rpc_error, retry_after_of
from participants.central_bank.channels import bridge_channel
from participants.launcher import Network, prepare_network
from tests.conftest import (
    READY_TIMEOUT,
    RPC_TIMEOUT,
    LiveNetwork,
    new_id,
    now_ms,
    wait_for,
)

FLOOD = 3_000
MAX_IN_FLIGHT = 24
STREAM_BOUND = 64  # PBOC's instructions in flight over all its SubmitStream calls
CHANNELS = 4
FLOOD_DEADLINE = 240.0  # generous: the test is about answers, not speed
PAYERS = ("ICBC", "BOCQ")
Outcome = tuple[grpc.StatusCode, grpc.aio.AioRpcError | None, types.InstructionStatus | None]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The test network with PBOC's node bounded to MAX_IN_FLIGHT unary calls and
    STREAM_BOUND streamed instructions."""
    network = prepare_network(tmp_path_factory.mktemp("overload"))
    network.central_banks["PBOC"].args += [
        "--max-in-flight",
        str(MAX_IN_FLIGHT),
        "--max-stream-instructions",
        str(STREAM_BOUND),
    ]
    network.start()
    try:
        expected = {bank.id for cb in network.config.central_banks for bank in cb.banks}
        config = network.config
        with bridge_channel(config, config.central_banks[0].id) as channel:
            bridge = bridge_grpc.BridgeLedgerStub(channel)

            def admitted() -> bool:
                listed = bridge.ListParticipants(bridge_pb.ListParticipantsRequest(), timeout=5.0)
                return expected <= {p.id for p in listed.participants}

            wait_for(admitted, timeout=READY_TIMEOUT, what="every bank to be admitted")
        yield network
    finally:
        network.stop()


def payments(live: LiveNetwork, count: int) -> list[types.SignedInstruction]:
    bodies = [
        Pay(
            new_id("flood"),
            PAYERS[i % len(PAYERS)],
            now_ms() + 600_000,
            "HSBCHK",
            "CNY",
            1,
            f"flood {i}",
            signed_at=now_ms(),
        )
        for i in range(count)
    ]
    return [live.signed(body) for body in bodies]


async def send_all(address: str, requests: list[types.SignedInstruction]) -> list[Outcome]:
    """Every request at once over a few channels; the outcome of each, in order."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [cb_grpc.CentralBankStub(channel) for channel in channels]

    async def one(i: int, request: types.SignedInstruction) -> Outcome:
        try:
            reply = await stubs[i % CHANNELS].Pay(request, timeout=FLOOD_DEADLINE)
        except grpc.aio.AioRpcError as error:
            return error.code(), error, None
        return grpc.StatusCode.OK, None, reply

    try:
        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    finally:
        for channel in channels:
            await channel.close()


async def resubmit(
    address: str, requests: list[types.SignedInstruction]
) -> list[types.InstructionStatus]:
    """Resubmit each request (a few at a time), honouring pushback, until it is answered OK."""
    window = asyncio.Semaphore(MAX_IN_FLIGHT // 2)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cb_grpc.CentralBankStub(channel)

        async def one(request: types.SignedInstruction) -> types.InstructionStatus:
            async with window:
                while True:
                    try:
                        reply: types.InstructionStatus = await stub.Pay(
                            request, timeout=RPC_TIMEOUT
                        )
                        return reply
                    except grpc.aio.AioRpcError as error:
                        if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        await asyncio.sleep(retry_after_of(error) or 0.1)

        return await asyncio.gather(*(one(r) for r in requests))


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in {error.code().name}: {error.details()}")


def log_counts(db: Path, ids: set[str]) -> Counter[str]:
    """How many log entries each of `ids` has, read from the bridge's file without writing."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0) as connection:
        rows = connection.execute(
            "SELECT instruction_id FROM entries WHERE sender IN (?, ?)", PAYERS
        ).fetchall()
    connection.close()
    return Counter(instruction_id for (instruction_id,) in rows if instruction_id in ids)


def test_a_flood_is_answered_shed_calls_are_retryable_and_settle_once(live: LiveNetwork) -> None:
    """3,000 calls at once: each is settled or shed (OVERLOADED, retryable, pushback), none lost."""
    for payer in PAYERS:
        live.issue(payer, 10 * FLOOD)
    requests = payments(live, FLOOD)
    address = live.address("PBOC")

    outcomes = asyncio.run(send_all(address, requests))

    codes = Counter(code for code, _, _ in outcomes)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    shed = [(r, e) for r, (code, e, _) in zip(requests, outcomes, strict=True) if e is not None]
    assert shed, f"nothing was shed with {FLOOD} calls on a bound of {MAX_IN_FLIGHT}: {codes}"
    for _, error in shed:
        assert refusal_from_rpc_error(error).reason is Reason.OVERLOADED, error.details()
        info = error_info(error)
        assert info.metadata["retryable"] == "true"
        delay = retry_after_of(error)
        assert delay is not None
        assert delay > 0
    settled = [reply for _, _, reply in outcomes if reply is not None]
    assert all(r.receipt.outcome == types.OUTCOME_SETTLED for r in settled)
    assert not any(r.receipt.duplicate for r in settled)

    ids = {r.instruction.instruction_id for r in requests}
    shed_ids = {r.instruction.instruction_id for r, _ in shed}
    counts = log_counts(live.config.bridge_db, ids)
    assert not shed_ids & set(counts), "a shed call left an entry in the log"
    assert all(n == 1 for n in counts.values())

    again = asyncio.run(resubmit(address, [r for r, _ in shed]))
    assert all(r.receipt.outcome == types.OUTCOME_SETTLED for r in again)
    assert not any(r.receipt.duplicate for r in again), "a shed call had been settled"
    counts = log_counts(live.config.bridge_db, ids)
    assert set(counts) == ids, "a resubmitted payment did not settle"
    assert set(counts.values()) == {1}, "a payment settled twice"

    retried = asyncio.run(resubmit(address, requests[:10]))
    assert all(r.receipt.duplicate for r in retried)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    live.assert_conserved()


async def two_streams(
    address: str,
    first: list[types.SignedInstruction],
    second: list[types.SignedInstruction],
    bridge_pid: int,
) -> tuple[cb_pb.BankSubmitResponse, cb_pb.BankSubmitResponse]:
    """`first` as one batch on a SubmitStream call, then, once the node has had time to take
    it on, `second` on another call; the answer of each (the frozen bridge `bridge_pid` let
    go once the second is answered). Raw bytes over a generic channel, as any client sends."""
    async with grpc.aio.insecure_channel(address) as channel:
        submit = channel.stream_stream(
            "/bridge.v1.CentralBank/SubmitStream",
            request_serializer=None,
            response_deserializer=None,
        )
        one = submit(timeout=FLOOD_DEADLINE)
        two = submit(timeout=FLOOD_DEADLINE)
        request = cb_pb.BankSubmitRequest(correlation_id=1, instructions=first)
        await one.write(request.SerializeToString())
        await asyncio.sleep(1.0)
        request = cb_pb.BankSubmitRequest(correlation_id=2, instructions=second)
        await two.write(request.SerializeToString())
        answer_two = cb_pb.BankSubmitResponse.FromString(await two.read())
        os.kill(bridge_pid, signal.SIGCONT)  # the held batch may go on now
        answer_one = cb_pb.BankSubmitResponse.FromString(await one.read())
        await one.done_writing()
        await two.done_writing()
        return answer_one, answer_two


def test_streams_past_the_nodes_bound_are_shed_at_once_and_settle_once_resubmitted(
    network: Network, live: LiveNetwork
) -> None:
    """Two SubmitStream calls on one node share its bound: with a full batch held (the bridge
    frozen), the other call's batch is answered at once, each instruction OVERLOADED (retryable,
    nothing done); resubmitted, every instruction of both settles exactly once."""
    for payer in PAYERS:
        live.issue(payer, 10_000)
    held, extra = payments(live, STREAM_BOUND), payments(live, 8)
    assert network.bridge.process is not None
    bridge_pid = network.bridge.process.pid
    os.kill(bridge_pid, signal.SIGSTOP)  # what reaches the bridge waits
    try:
        answer_one, answer_two = asyncio.run(
            two_streams(live.address("PBOC"), held, extra, bridge_pid)
        )
    finally:
        os.kill(bridge_pid, signal.SIGCONT)
    # the node took whichever batch it read first; the other did not fit beside it
    answers = {1: answer_one, 2: answer_two}
    shed_calls = [
        number
        for number, answer in answers.items()
        if {r.refusal.reason for r in answer.results} == {Reason.OVERLOADED.value}
    ]
    assert len(shed_calls) == 1, answers
    shed = answers[shed_calls[0]]
    assert {r.refusal.code for r in shed.results} == {"RESOURCE_EXHAUSTED"}
    assert "resubmit the same instruction id" in shed.results[0].refusal.message
    taken = answers[3 - shed_calls[0]]
    for result in taken.results:  # settled, or not decided while the bridge was frozen
        assert result.HasField("status") or Reason(result.refusal.reason).retryable, result

    requests = held + extra
    ids = {r.instruction.instruction_id for r in requests}
    shed_ids = {r.instruction.instruction_id for r in (held if shed_calls[0] == 1 else extra)}
    assert not shed_ids & set(log_counts(live.config.bridge_db, ids)), "a shed one settled"
    again = asyncio.run(resubmit(live.address("PBOC"), requests))
    assert all(r.receipt.outcome == types.OUTCOME_SETTLED for r in again)
    counts = log_counts(live.config.bridge_db, ids)
    assert set(counts) == ids, "a resubmitted instruction did not settle"
    assert set(counts.values()) == {1}, "an instruction settled twice"
    live.assert_conserved()
