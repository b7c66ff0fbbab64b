"""A central bank node's link to the bridge: what a caller hears when the stream fails.

The Submit call is a stand-in that takes requests from the link's stream at the pace a test
sets and then breaks, so what was handed to the call and what was still queued is known.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge.errors import Reason, Refused
from participants.central_bank.bridge_link import BridgeLink
from tests.factories import network, pay


class BreakingCall:
    """A Submit call that takes `take` requests, waits for `release`, then breaks."""

    def __init__(self, requests: AsyncIterator[pb.SubmitRequest], take: int) -> None:
        self.requests = requests
        self.take = take
        self.taken: list[int] = []
        self.release = asyncio.Event()

    def __aiter__(self) -> BreakingCall:
        return self

    async def __anext__(self) -> pb.SubmitResponse:
        while len(self.taken) < self.take:
            self.taken.append((await anext(self.requests)).correlation_id)
        await self.release.wait()
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection reset")

    async def drain(self) -> list[int]:
        """Take whatever the link still offers (after the test let callers give up)."""
        more = []
        with_timeout = asyncio.wait_for(anext(self.requests), 0.2)
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            more.append((await with_timeout).correlation_id)
        return more

    def cancel(self) -> None:
        pass


class Stub:
    def __init__(self, take: int) -> None:
        self.take = take
        self.calls: list[BreakingCall] = []

    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        call = BreakingCall(requests, self.take)
        self.calls.append(call)
        return call


async def test_a_broken_link_is_outcome_unknown_after_sending_and_unavailable_before() -> None:
    """The instruction the call took may have settled (OUTCOME_UNKNOWN); the one still queued
    was never sent (UNAVAILABLE); both are not decided."""
    net = network()
    stub = Stub(take=1)
    link = BridgeLink(stub)  # type: ignore[arg-type]
    sent = asyncio.create_task(link.submit(pay(net, "ICBC", "CCB", 10)))
    queued = asyncio.create_task(link.submit(pay(net, "ICBC", "CCB", 20)))
    while not (stub.calls and stub.calls[0].taken):
        await asyncio.sleep(0.01)
    (call,) = stub.calls
    call.release.set()
    first, second = await sent, await queued
    assert isinstance(first, Refused)
    assert first.reason is Reason.OUTCOME_UNKNOWN
    assert isinstance(second, Refused)
    assert second.reason is Reason.UNAVAILABLE
    assert first.reason.retryable
    assert second.reason.retryable
    await link.close()


async def test_an_instruction_that_timed_out_unsent_is_never_sent_later() -> None:
    """A caller told UNAVAILABLE (never sent) after its timeout: the link drops the queued
    instruction instead of sending it behind the caller's back."""
    net = network()
    stub = Stub(take=0)
    link = BridgeLink(stub)  # type: ignore[arg-type]
    result = await link.submit(pay(net, "ICBC", "CCB", 10), timeout=0.05)
    assert isinstance(result, Refused)
    assert result.reason is Reason.UNAVAILABLE
    (call,) = stub.calls
    assert await call.drain() == []
    call.release.set()
    await link.close()


class RecordingCall:
    """A Submit call that, once `go` is set, records every request the link writes; it never
    answers."""

    def __init__(self, requests: AsyncIterator[pb.SubmitRequest]) -> None:
        self.requests = requests
        self.written: list[pb.SubmitRequest] = []
        self.go = asyncio.Event()

    def __aiter__(self) -> RecordingCall:
        return self

    async def __anext__(self) -> pb.SubmitResponse:
        await self.go.wait()
        async for request in self.requests:
            self.written.append(request)
        raise StopAsyncIteration

    def cancel(self) -> None:
        pass


class RecordingStub:
    def __init__(self) -> None:
        self.calls: list[RecordingCall] = []

    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        call = RecordingCall(requests)
        self.calls.append(call)
        return call


async def test_an_instruction_whose_caller_was_cancelled_before_sending_is_never_sent() -> None:
    """A caller cancelled while its instruction was still queued: the link never sends it."""
    net = network()
    stub = RecordingStub()
    link = BridgeLink(stub)  # type: ignore[arg-type]
    dropped, kept = pay(net, "ICBC", "CCB", 10), pay(net, "ICBC", "CCB", 20)
    gone = asyncio.create_task(link.submit(dropped))
    await asyncio.sleep(0.05)  # queued on the link, the stream not writing yet
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    waiting = asyncio.create_task(link.submit(kept, timeout=5.0))
    (call,) = stub.calls
    call.go.set()
    while not call.written:
        await asyncio.sleep(0.01)
    written = [r.instruction.instruction.instruction_id for r in call.written]
    assert written == [kept.body.instruction_id]
    assert gone.cancelled()
    waiting.cancel()
    await link.close()


async def test_each_request_sent_carries_the_time_its_caller_still_waits() -> None:
    """timeout_ms tells the bridge how long the caller waits, so it can drop what is late."""
    net = network()
    stub = RecordingStub()
    link = BridgeLink(stub)  # type: ignore[arg-type]
    waiting = asyncio.create_task(link.submit(pay(net, "ICBC", "CCB", 10), timeout=5.0))
    while not stub.calls:
        await asyncio.sleep(0.01)
    stub.calls[0].go.set()
    while not stub.calls[0].written:
        await asyncio.sleep(0.01)
    (request,) = stub.calls[0].written
    assert 0 < request.timeout_ms <= 5_000
    waiting.cancel()
    await link.close()
