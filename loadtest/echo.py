"""A trivial gRPC echo service: the load generator's own ceiling, measured in the same run.

Two methods, both answering with the bytes they received:

- `/loadtest.v1.Echo/Echo`: unary (the Locust baseline of `bench e2e`);
- `/loadtest.v1.Echo/EchoStream`: bidirectional stream (the baseline of `bench stream`).

They are registered with a generic handler and identity (de)serializers, so no `.proto` and no
generated code are involved: requests and responses are raw bytes. That keeps the baseline at
the transport's floor (nothing is parsed), so the bridge is compared with the cheapest possible
RPC over the same gRPC stack, process model and client code; the echo payload has the size of
a signed instruction so the bytes on the wire match too.

Run one as a process: `python -m loadtest.echo --port 0` prints
`{"event": "listening", "port": N}` once it serves, like the bridge's nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from bridge import event_loop

__all__ = [
    "ECHO_METHOD",
    "ECHO_STREAM_METHOD",
    "PAYLOAD",
    "StreamEchoFigures",
    "batch_payload",
    "echo_handler",
    "measure_stream_echo",
    "serve",
]

SERVICE = "loadtest.v1.Echo"
ECHO_METHOD = f"/{SERVICE}/Echo"
ECHO_STREAM_METHOD = f"/{SERVICE}/EchoStream"
PAYLOAD = bytes(range(256)) + bytes(range(200))  # about a signed PvP's size on the wire
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _echo_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def echo_handler() -> grpc.GenericRpcHandler:
    """Both echo methods, bytes in and bytes out."""
    handler: grpc.GenericRpcHandler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "EchoStream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )
    return handler


async def serve(port: int, stop: asyncio.Event, *, announce: bool = True) -> None:
    """Serve the echo service on 127.0.0.1:`port` (0: a free port) until `stop` is set."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((echo_handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if announce:
        print(json.dumps({"event": "listening", "role": "echo", "port": bound}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=1.0)


@dataclass(frozen=True, slots=True)
class StreamEchoFigures:
    messages: int
    seconds: float
    batch: int = 1  # payloads (each a signed PvP's size) per message

    @property
    def per_second(self) -> float:
        """Messages echoed per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def payloads_per_second(self) -> float:
        """Payloads echoed per second: the transport's floor for as many PvPs in this shape."""
        return self.per_second * self.batch


def batch_payload(batch: int) -> bytes:
    """One echo message carrying `batch` payloads: the bytes of a `batch`-PvP message."""
    return PAYLOAD * max(1, batch)


async def _stream_echo_one(
    address: str, duration: float, window: int, batch: int
) -> StreamEchoFigures:
    """One bidi stream kept `window` payloads deep (in messages of `batch` >= 1 payloads) for
    `duration` seconds, as the bench client keeps `window` PvPs in flight in batches."""
    payload = batch_payload(batch)
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.stream_stream(ECHO_STREAM_METHOD)
        credit = asyncio.Semaphore(max(1, window // batch))
        deadline = time.perf_counter() + duration

        async def requests() -> AsyncIterator[bytes]:
            while time.perf_counter() < deadline:
                await credit.acquire()
                yield payload

        start = time.perf_counter()
        received = 0
        async for _ in method(requests()):
            received += 1
            credit.release()
        return StreamEchoFigures(received, time.perf_counter() - start, batch)


async def measure_stream_echo(
    address: str, *, duration: float, streams: int = 1, window: int = 256, batch: int = 1
) -> StreamEchoFigures:
    """What the bidi echo sustains with `streams` concurrent streams, each `window` payloads
    deep in messages of `batch` payloads (the bench client's shape)."""
    batch = max(1, batch)
    results = await asyncio.gather(
        *(_stream_echo_one(address, duration, window, batch) for _ in range(streams))
    )
    return StreamEchoFigures(
        sum(r.messages for r in results), max(r.seconds for r in results), batch
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the load test's gRPC echo service.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    options = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(options.port, stop)

    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(run())  # the nodes' loop: the baseline runs on what they run on


if __name__ == "__main__":
    main()
