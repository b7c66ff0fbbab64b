"""`CentralBank.SubmitStream`'s own bookkeeping, with the node's handling of each instruction
replaced: how much a client that does not read can make the node take on, and what one
instruction (or the forwarding of a batch's group) failing unexpectedly does to the answer of
its batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.errors import Reason, Refused
from bridge.node.request_guard import PartlyRefused
from participants.central_bank.service import (
    STREAM_WINDOW,
    CentralBankService,
    Checked,
    NodeStreamLoad,
)

BATCH = 1024


async def test_a_client_that_does_not_read_is_held_to_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends batch after batch and reads one answer gets no more than the
    window's worth of instructions taken on: answers waiting for gRPC keep their room."""
    taken = 0

    async def answer(self: Any, request: pb.BankSubmitRequest, refused: Any) -> Any:
        await asyncio.sleep(0)
        return pb.BankSubmitResponse(
            correlation_id=request.correlation_id,
            results=[pb.BankSubmitResult() for _ in request.instructions],
        )

    monkeypatch.setattr(CentralBankService, "_answer", answer)

    async def requests() -> AsyncIterator[pb.BankSubmitRequest]:
        nonlocal taken
        for number in range(1, 101):
            taken = number
            yield pb.BankSubmitRequest(
                correlation_id=number, instructions=[types.SignedInstruction()] * BATCH
            )
            await asyncio.sleep(0)

    node = CentralBankService(None)  # type: ignore[arg-type]
    answers = node.SubmitStream(requests(), None)  # type: ignore[arg-type]
    first = await asyncio.wait_for(answers.__anext__(), 30)
    assert first.correlation_id == 1
    await asyncio.sleep(1.0)  # the client reads nothing more
    assert taken <= STREAM_WINDOW // BATCH + 1, taken
    await answers.aclose()


class ForwardingCore:
    """Stands in for the bridge link: answers each forwarded instruction with a status naming
    how many signatures it carries, or fails a whole group whose first carries `fail_at`."""

    def __init__(self, fail_at: int = 0) -> None:
        self.fail_at = fail_at
        self.groups: list[list[int]] = []

    async def settle_many(self, submissions: Any) -> list[types.InstructionStatus]:
        counts = [len(envelope.signatures) for envelope, _ in submissions]
        self.groups.append(counts)
        if counts[0] == self.fail_at:
            raise RuntimeError("a fault of the node's link")
        return [types.InstructionStatus(block_height=n) for n in counts]


def checked_as_is(fail_at: int) -> Any:
    """`_checked` passing every instruction on unchanged, failing unexpectedly for those with
    `fail_at` signatures and refusing those with none."""

    async def checked(self: Any, request: types.SignedInstruction, kind: Any) -> Checked:
        if len(request.signatures) == fail_at:
            raise RuntimeError("a fault of the node")
        if not request.signatures:
            raise Refused(Reason.MISSING_SIGNATURE, "not signed")
        return Checked(request, request, ("ICBC",))  # type: ignore[arg-type]

    return checked


async def answers_to(node: CentralBankService, counts: list[int]) -> list[pb.BankSubmitResult]:
    batch = [types.SignedInstruction(signatures=[types.Signature()] * n) for n in counts]

    async def requests() -> AsyncIterator[pb.BankSubmitRequest]:
        yield pb.BankSubmitRequest(correlation_id=7, instructions=batch)

    answers = [a async for a in node.SubmitStream(requests(), None)]  # type: ignore[arg-type]
    assert [a.correlation_id for a in answers] == [7]
    return list(answers[0].results)


async def test_an_instruction_failing_unexpectedly_is_not_decided_and_the_rest_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One instruction of a batch whose checks raise an unexpected error is answered
    OUTCOME_UNKNOWN (resubmit it); the others keep their own answers, in order, and are
    forwarded as one group."""
    monkeypatch.setattr(CentralBankService, "_checked", checked_as_is(fail_at=2))
    core = ForwardingCore()
    node = CentralBankService(core)  # type: ignore[arg-type]
    results = await answers_to(node, [1, 2, 0, 3])
    assert [r.WhichOneof("result") for r in results] == ["status", "refusal", "refusal", "status"]
    assert [results[0].status.block_height, results[3].status.block_height] == [1, 3]
    assert results[1].refusal.reason == Reason.OUTCOME_UNKNOWN.value
    assert results[2].refusal.reason == Reason.MISSING_SIGNATURE.value
    assert core.groups == [[1, 3]]


async def test_a_group_failing_unexpectedly_in_forwarding_is_not_decided_refusals_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When handing a batch's group to the bridge link fails unexpectedly, each instruction of
    the group is OUTCOME_UNKNOWN (it may have gone on); those refused before keep their refusal."""
    monkeypatch.setattr(CentralBankService, "_checked", checked_as_is(fail_at=-1))
    node = CentralBankService(ForwardingCore(fail_at=4))  # type: ignore[arg-type]
    results = await answers_to(node, [4, 0, 5])
    assert [r.refusal.reason for r in results] == [
        Reason.OUTCOME_UNKNOWN.value,
        Reason.MISSING_SIGNATURE.value,
        Reason.OUTCOME_UNKNOWN.value,
    ]


def hold_first_stream(monkeypatch: pytest.MonkeyPatch, release: asyncio.Event) -> list[int]:
    """`_answer` holding requests of correlation id < 100 until `release`; the ids answered."""
    handled: list[int] = []

    async def answer(self: Any, request: pb.BankSubmitRequest, refused: Any) -> Any:
        if request.correlation_id < 100:
            await release.wait()
        handled.append(request.correlation_id)
        return pb.BankSubmitResponse(
            correlation_id=request.correlation_id,
            results=[pb.BankSubmitResult() for _ in request.instructions],
        )

    monkeypatch.setattr(CentralBankService, "_answer", answer)
    return handled


async def settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_many_streams_together_are_held_to_the_nodes_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two streams of one node share its bound: while the first's work holds it, a batch on
    the second is answered at once, each instruction OVERLOADED (retryable, nothing done) but
    those refused at the edge, which keep their final refusal; once the first's work is done
    the second is served again, and nothing stays counted."""
    release = asyncio.Event()
    handled = hold_first_stream(monkeypatch, release)
    recorded: list[str] = []

    class EdgeCore:
        def refused_at_edge(self, method: str, message: Any, refusal: Refused) -> None:
            recorded.append(refusal.reason.value)

    load = NodeStreamLoad(bound=2 * BATCH)
    node = CentralBankService(EdgeCore(), stream_load=load)  # type: ignore[arg-type]
    batch = [types.SignedInstruction()] * BATCH
    second_queue: asyncio.Queue[Any] = asyncio.Queue()

    async def first_requests() -> AsyncIterator[pb.BankSubmitRequest]:
        for number in (1, 2):
            yield pb.BankSubmitRequest(correlation_id=number, instructions=batch)

    async def second_requests() -> AsyncIterator[Any]:
        while (request := await second_queue.get()) is not None:
            yield request

    first = node.SubmitStream(first_requests(), None)  # type: ignore[arg-type]
    first_answers = asyncio.ensure_future(first.__anext__())
    await settle_loop()  # the first stream's two batches taken on
    assert load.in_flight == 2 * BATCH
    second = node.SubmitStream(second_requests(), None)  # type: ignore[arg-type]
    too_long = Refused(Reason.FIELD_TOO_LONG, "a field is too long")
    second_queue.put_nowait(
        PartlyRefused(
            pb.BankSubmitRequest(correlation_id=101, instructions=batch[:4]), {2: too_long}
        )
    )
    shed = await asyncio.wait_for(second.__anext__(), 30)
    assert shed.correlation_id == 101
    reasons = [r.refusal.reason for r in shed.results]
    assert reasons == ["OVERLOADED", "OVERLOADED", "FIELD_TOO_LONG", "OVERLOADED"]
    assert shed.results[0].refusal.code == "RESOURCE_EXHAUSTED"
    assert "resubmit" in shed.results[0].refusal.message
    assert recorded == ["FIELD_TOO_LONG"]  # the edge's refusal is recorded; the shed are not
    assert 101 not in handled  # shed, not worked on
    release.set()
    assert (await asyncio.wait_for(first_answers, 30)).correlation_id == 1
    assert (await asyncio.wait_for(first.__anext__(), 30)).correlation_id == 2
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(first.__anext__(), 30)
    second_queue.put_nowait(pb.BankSubmitRequest(correlation_id=102, instructions=batch))
    served = await asyncio.wait_for(second.__anext__(), 30)
    assert served.correlation_id == 102
    assert not any(r.HasField("refusal") for r in served.results)
    second_queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(second.__anext__(), 30)
    assert load.in_flight == 0


async def test_a_client_that_stops_reading_does_not_hold_the_nodes_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers waiting for a client that reads nothing hold that stream's window only: once
    their work is done the node's room is free for other streams."""
    release = asyncio.Event()
    release.set()
    hold_first_stream(monkeypatch, release)
    load = NodeStreamLoad(bound=2 * BATCH)
    node = CentralBankService(None, stream_load=load)  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[pb.BankSubmitRequest]:
        for number in (1, 2):
            yield pb.BankSubmitRequest(
                correlation_id=number, instructions=[types.SignedInstruction()] * BATCH
            )
        await asyncio.Event().wait()

    answers = node.SubmitStream(requests(), None)  # type: ignore[arg-type]
    assert (await asyncio.wait_for(answers.__anext__(), 30)).correlation_id == 1
    await settle_loop()  # the second answer is ready but not read
    assert load.in_flight == 0
    assert load.try_take(2 * BATCH)
    await answers.aclose()


async def test_a_stream_ended_with_work_running_or_not_started_gives_back_its_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call that ends while its batches are being worked on, or before their work even
    started, gives the node's bound back all it held."""
    release = asyncio.Event()  # never set: the work never finishes by itself
    hold_first_stream(monkeypatch, release)
    load = NodeStreamLoad(bound=10 * BATCH)
    node = CentralBankService(None, stream_load=load)  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[pb.BankSubmitRequest]:
        for number in (1, 2, 3):
            yield pb.BankSubmitRequest(
                correlation_id=number, instructions=[types.SignedInstruction()] * BATCH
            )
        await asyncio.Event().wait()  # the client keeps the call open

    answers = node.SubmitStream(requests(), None)  # type: ignore[arg-type]
    pending = asyncio.ensure_future(answers.__anext__())
    await asyncio.sleep(0)  # the reader runs; some handlers may not have started yet
    pending.cancel()  # the call ends (cancelled, or the client went away)
    with pytest.raises(asyncio.CancelledError):
        await pending
    await settle_loop()
    assert load.in_flight == 0


def test_a_batch_larger_than_the_bound_is_taken_when_nothing_else_is() -> None:
    """A bound below the largest batch does not shed that batch forever: alone, it is taken."""
    load = NodeStreamLoad(bound=100)
    assert load.try_take(BATCH)
    assert not load.try_take(1)
    load.release(BATCH)
    assert load.try_take(60)
    assert not load.try_take(BATCH)


async def test_a_peer_endorsement_failing_unexpectedly_is_unavailable_and_nothing_is_sent() -> None:
    """When asking the peer node for its endorsements fails with a fault of this node, the
    legs are UNAVAILABLE (nothing went to the bridge: resubmit), not OUTCOME_UNKNOWN, and
    nothing is forwarded."""

    class BrokenEndorser:
        async def endorse_many(self, legs: Any) -> Any:
            raise RuntimeError("a fault of the node's endorser")

    class Core(ForwardingCore):
        def endorser(self, home: str) -> BrokenEndorser:
            return BrokenEndorser()

    core = Core()
    node = CentralBankService(core)  # type: ignore[arg-type]
    request = types.SignedInstruction()
    envelope: Any = type("E", (), {"body": type("B", (), {"sender": "ICBC"})()})()
    items = [Checked(request, envelope, peer="HKMA"), Checked(request, envelope, peer="HKMA")]
    handled: list[Any] = [None, None]
    await node._endorsed_by("HKMA", items, [0, 1], handled)
    assert [h.reason for h in handled] == [Reason.UNAVAILABLE, Reason.UNAVAILABLE]
    assert "nothing was sent to the bridge" in handled[0].message
    assert core.groups == []
