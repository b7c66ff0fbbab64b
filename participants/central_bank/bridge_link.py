"""A central bank node's link to the bridge: one persistent Submit stream, many instructions.

Instructions are queued and written onto one bidirectional stream; responses come back tagged
with their correlation id and resolve the waiting caller. If the stream breaks, every caller
waiting on it gets UNAVAILABLE (the instruction may or may not have settled: resubmitting the
same instruction id is safe, the bridge is idempotent) and the next submission opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as pb_grpc
from bridge.domain import Envelope
from bridge.errors import Reason, Refused
from bridge.settlement import Result

log = logging.getLogger("participants.bridge_link")


class _Stream:
    """One open Submit call and the callers waiting on it."""

    def __init__(self, stub: pb_grpc.BridgeLedgerStub) -> None:
        self.outbox: asyncio.Queue[pb.SubmitRequest | None] = asyncio.Queue()
        self.waiting: dict[int, asyncio.Future[Result]] = {}
        self.open = True
        self.call = stub.Submit(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.SubmitRequest]:
        while (request := await self.outbox.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                future = self.waiting.pop(response.correlation_id, None)
                if future is not None and not future.done():
                    future.set_result(wire.submit_result_from_proto(response))
        except grpc.aio.AioRpcError as error:
            log.warning(
                "bridge stream broke", extra={"code": error.code().name, "details": error.details()}
            )
        finally:
            self.open = False
            broken = Refused(
                Reason.UNAVAILABLE, "the link to the bridge broke; resubmit the same instruction id"
            )
            for future in self.waiting.values():
                if not future.done():
                    future.set_result(broken)
            self.waiting.clear()

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.call.cancel()


class BridgeLink:
    def __init__(self, stub: pb_grpc.BridgeLedgerStub) -> None:
        self.stub = stub
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None

    async def submit(self, envelope: Envelope, timeout: float = 30.0) -> Result:
        stream = self._stream
        if stream is None or not stream.open:
            stream = self._stream = _Stream(self.stub)
        correlation_id = next(self._ids)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        stream.waiting[correlation_id] = future
        request = pb.SubmitRequest(
            correlation_id=correlation_id, instruction=wire.envelope_to_proto(envelope)
        )
        stream.outbox.put_nowait(request)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            stream.waiting.pop(correlation_id, None)
            return Refused(Reason.UNAVAILABLE, f"no answer from the bridge within {timeout} s")

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
