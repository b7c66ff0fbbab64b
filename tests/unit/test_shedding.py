"""The in-flight bound, on a real gRPC server on loopback with calls held open by the test.

A tiny service whose unary method waits until the test releases it keeps exactly the calls the
test wants in flight; a server-streaming method stays open meanwhile, and the health service
answers beside them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge.errors import Reason
from bridge.node.shedding import InFlightLimit, call_deadline
from bridge.status import refusal_from_rpc_error, retry_after_of

HOLD = "/test.Held/Hold"
WATCH = "/test.Held/Watch"


class Held:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.deadlines: list[float | None] = []

    async def hold(self, request: bytes, context: Any) -> bytes:
        self.deadlines.append(call_deadline())
        await self.release.wait()
        return request

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"open"
        await asyncio.Event().wait()  # open until cancelled


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Held, InFlightLimit]]:
    held = Held()
    limit = InFlightLimit(2, retry_after=0.25)
    server = grpc.aio.server(interceptors=[limit])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Held",
                {
                    "Hold": grpc.unary_unary_rpc_method_handler(held.hold),
                    "Watch": grpc.unary_stream_rpc_method_handler(held.watch),
                },
            ),
        )
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, held, limit
    finally:
        held.release.set()
        await channel.close()
        await server.stop(None)


async def until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_calls_past_the_bound_are_shed_with_reason_and_pushback(
    served: tuple[grpc.aio.Channel, Held, InFlightLimit], caplog: pytest.LogCaptureFixture
) -> None:
    """At the bound: RESOURCE_EXHAUSTED, OVERLOADED, RetryInfo; streams and health not counted."""
    caplog.set_level(logging.INFO, logger="bridge.shedding")
    channel, held, limit = served
    hold = channel.unary_unary(HOLD)
    stream = channel.unary_stream(WATCH)(b"")
    assert await stream.read() == b"open"  # a long-lived stream holds no slot
    in_flight = [asyncio.ensure_future(hold(b"x", timeout=30)) for _ in range(2)]
    await until(lambda: limit.in_flight == 2)

    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await hold(b"y", timeout=30)
        assert shed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal_from_rpc_error(shed.value).reason is Reason.OVERLOADED
        assert retry_after_of(shed.value) == pytest.approx(0.25)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    held.release.set()
    assert await asyncio.gather(*in_flight) == [b"x", b"x"]
    assert await hold(b"z", timeout=30) == b"z"
    assert limit.shed == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("overloaded")]) == 1
    assert len([m for m in messages if m.startswith("load back")]) == 1
    stream.cancel()


async def test_the_callers_deadline_is_known_to_the_handler(
    served: tuple[grpc.aio.Channel, Held, InFlightLimit],
) -> None:
    """call_deadline() is the caller's deadline in event-loop time, None without one."""
    channel, held, _ = served
    held.release.set()
    hold = channel.unary_unary(HOLD)
    before = asyncio.get_running_loop().time()
    await hold(b"x", timeout=30)
    await hold(b"x")
    with_deadline, without = held.deadlines
    assert with_deadline is not None
    assert before + 25 < with_deadline < before + 35  # the timeout travels rounded
    assert without is None


async def test_the_bounded_handler_is_built_once_per_method_and_handler() -> None:
    """Calls of a method reuse one bounded handler until the handler behind it changes."""
    limit = InFlightLimit(2)
    held = Held()
    first = grpc.unary_unary_rpc_method_handler(held.hold)
    second = grpc.unary_unary_rpc_method_handler(held.hold)
    behind = [first, first, second]

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return behind.pop(0)

    details = CallDetails(HOLD, ())
    one = await limit.intercept_service(continuation, details)
    again = await limit.intercept_service(continuation, details)
    other = await limit.intercept_service(continuation, details)
    assert one is again
    assert other is not one
    assert one.unary_unary is not held.hold  # bounded, not the handler itself
