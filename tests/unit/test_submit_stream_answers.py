"""`CentralBank.SubmitStream`'s own bookkeeping, with the node's handling of each instruction
replaced: how much a client that does not read can make the node take on, and what one
instruction failing unexpectedly does to the answer of its batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.errors import Reason
from participants.central_bank.service import STREAM_WINDOW, CentralBankService

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

    node = CentralBankService.__new__(CentralBankService)
    answers = node.SubmitStream(requests(), None)  # type: ignore[arg-type]
    first = await asyncio.wait_for(answers.__anext__(), 30)
    assert first.correlation_id == 1
    await asyncio.sleep(1.0)  # the client reads nothing more
    assert taken <= STREAM_WINDOW // BATCH + 1, taken
    await answers.aclose()


async def test_an_instruction_failing_unexpectedly_is_not_decided_and_the_rest_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One instruction of a batch whose handling raises an unexpected error is answered
    OUTCOME_UNKNOWN (resubmit it); the others keep their own answers, in order."""

    async def submitted(self: Any, request: types.SignedInstruction) -> types.InstructionStatus:
        if len(request.signatures) == 2:
            raise RuntimeError("a fault of the node")
        return types.InstructionStatus(block_height=len(request.signatures))

    monkeypatch.setattr(CentralBankService, "_submitted", submitted)
    batch = [types.SignedInstruction(signatures=[types.Signature()] * n) for n in (1, 2, 3)]

    async def requests() -> AsyncIterator[pb.BankSubmitRequest]:
        yield pb.BankSubmitRequest(correlation_id=7, instructions=batch)

    node = CentralBankService.__new__(CentralBankService)
    answers = [a async for a in node.SubmitStream(requests(), None)]  # type: ignore[arg-type]
    assert [a.correlation_id for a in answers] == [7]
    results = answers[0].results
    assert [r.WhichOneof("result") for r in results] == ["status", "refusal", "status"]
    assert [results[0].status.block_height, results[2].status.block_height] == [1, 3]
    assert results[1].refusal.reason == Reason.OUTCOME_UNKNOWN.value
