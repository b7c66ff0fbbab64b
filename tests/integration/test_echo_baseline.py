"""The stream echo baseline: it carries the bench client's message shape over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from loadtest.echo import ECHO_STREAM_METHOD, PAYLOAD, batch_payload, measure_stream_echo, serve
from participants.launcher import free_ports


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    port = free_ports(1)[0]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(port, stop, announce=False))
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
        yield address
    finally:
        stop.set()
        await task


@pytest.mark.asyncio
@pytest.mark.parametrize("batch", [1, 16])
async def test_the_echo_counts_payloads_of_the_clients_batch_shape(batch: int) -> None:
    """A batched echo sends messages of `batch` PvP-sized payloads and counts each payload."""
    async with echo_server() as address:
        figures = await measure_stream_echo(
            address, duration=0.3, streams=2, window=64, batch=batch
        )
    assert figures.messages > 0
    assert figures.batch == batch
    assert figures.payloads_per_second == pytest.approx(figures.per_second * batch)


@pytest.mark.asyncio
async def test_a_batched_echo_message_is_the_bytes_of_that_many_payloads() -> None:
    """The echo answers a batch message with the same bytes: `batch` payloads, nothing lost."""
    message = batch_payload(8)
    assert message == PAYLOAD * 8
    async with echo_server() as address, grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(ECHO_STREAM_METHOD)([message])
        answers = [answer async for answer in call]
    assert answers == [message]
