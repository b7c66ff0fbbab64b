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
