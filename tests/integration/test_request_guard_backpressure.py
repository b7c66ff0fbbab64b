"""A request stream behind the request guard keeps gRPC's flow control: a caller that sends
and never reads stops the handler from reading further requests, instead of having the node
work through everything it sends and hold every answer in memory.

A real loopback server runs a stream handler of `CentralBank.EndorseStream`'s shape behind
`RequestGuard` (the guard answers bad messages by correlation id on such streams, through a
queue of answers); a raw client writes requests of about 30 KiB each and reads nothing, while
each answer is about 200 KiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.node.request_guard import ANSWERS_AHEAD, RequestGuard

METHOD = "/bridge.v1.CentralBank/EndorseStream"
SENT = 3_000
PADDING = [
    types.SignedInstruction(
        instruction=types.Instruction(instruction_id=f"instruction-{n:05d}", sender="ICBC")
    )
    for n in range(1_000)
]

# an answer of about 200 KiB per request: gRPC's flow control fills after some dozens
REFUSED = pb.EndorsementResult(refusal=types.Refusal(reason="MALFORMED", message="m" * 200))


def answer_pumps() -> list[asyncio.Task[Any]]:
    """The guard's tasks that feed a request stream's answers to its queue, still running."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").startswith("_answering_stream.")
        and not t.done()
    ]


async def handled_while_the_caller_reads_nothing(seconds: float) -> tuple[int, int]:
    """How many requests the handler took while a caller wrote SENT and read none, and how
    many of the guard's answer pumps were left running once the caller had cancelled."""
    handled = 0

    async def endorse_stream(
        requests: AsyncIterator[pb.EndorseStreamRequest], context: Any
    ) -> AsyncIterator[pb.EndorseStreamResponse]:
        nonlocal handled
        async for request in requests:
            handled += 1
            yield pb.EndorseStreamResponse(
                correlation_id=request.correlation_id,
                results=[REFUSED] * len(request.instructions),
            )

    handler = grpc.method_handlers_generic_handler(
        "bridge.v1.CentralBank",
        {
            "EndorseStream": grpc.stream_stream_rpc_method_handler(
                endorse_stream,
                request_deserializer=pb.EndorseStreamRequest.FromString,
                response_serializer=pb.EndorseStreamResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(interceptors=[RequestGuard()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
    request = pb.EndorseStreamRequest(instructions=PADDING)

    async def flood() -> None:  # raw bytes, never a read
        for correlation_id in range(1, SENT + 1):
            request.correlation_id = correlation_id
            await call.write(request.SerializeToString())

    writer = asyncio.create_task(flood())
    try:
        await asyncio.sleep(seconds)
        assert len(answer_pumps()) == 1  # the stream's, its queue of answers full
        writer.cancel()
        call.cancel()
        for _ in range(50):  # the server sees the cancellation and ends the handler
            await asyncio.sleep(0.1)
            if not answer_pumps():
                break
        left = len(answer_pumps())
    finally:
        writer.cancel()
        call.cancel()
        await channel.close()
        await server.stop(None)
    return handled, left


async def test_a_caller_that_never_reads_stops_the_handler_reading_requests() -> None:
    """Of 3,000 requests written and never answered-for, the handler takes only as many as
    the answers waiting for the transport, plus what gRPC's windows buffer."""
    handled, left = await handled_while_the_caller_reads_nothing(seconds=6.0)
    assert 0 < handled < SENT // 3, handled
    assert handled >= ANSWERS_AHEAD  # it was not blocked before the queue filled
    # once the caller cancels, nothing of the stream is left waiting on its full queue
    assert left == 0
