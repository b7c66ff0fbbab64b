"""A central bank node's link to the bridge: one persistent Submit stream, many instructions.

Instructions are queued and written onto one bidirectional stream; responses come back tagged
with their correlation id and resolve the waiting caller. A request whose caller has gone
before it is written is not sent; each one sent carries the time its caller still waits, so
the bridge drops it unsettled if it cannot sequence it in time. If the stream breaks (or no
answer comes in time), a caller whose instruction was already handed to the stream gets
OUTCOME_UNKNOWN (it may or may not have settled) and one whose instruction was still queued
gets UNAVAILABLE (nothing was sent); both are "not decided": resubmitting the same instruction
id is safe, the bridge is idempotent. The next submission opens a new stream.

With several bridge processes (one leads, the others stand by), the link holds a stub for each
and stays on one until it answers "not decided" (it stands by, broke, or stopped leading): it
then resubmits the same instruction to the next, for at most `FAILOVER_SECONDS`, and returns
the last answer if none took it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as pb_grpc
from bridge.domain import Envelope
from bridge.errors import Reason, Refused
from bridge.node.shedding import call_deadline
from bridge.settlement import Result
from participants.central_bank.reachability import Reachability

log = logging.getLogger("participants.bridge_link")
FAILOVER_SECONDS = 10.0
FAILOVER_PAUSE = 0.2  # between two rounds over every bridge address


class _Stream:
    """One open Submit call and the callers waiting on it."""

    def __init__(self, stub: pb_grpc.BridgeLedgerStub, reachability: Reachability) -> None:
        self.reachability = reachability
        # each request with the event-loop time by which its caller needs the answer
        self.outbox: asyncio.Queue[tuple[pb.SubmitRequest, float] | None] = asyncio.Queue()
        self.waiting: dict[int, asyncio.Future[Result]] = {}
        self.sent: set[int] = set()  # handed to the call: the bridge may have acted on them
        self.open = True
        self.opened = time.monotonic()
        self.call = stub.Submit(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.SubmitRequest]:
        """The queued requests whose callers still wait, each with the time left to it, so
        the bridge drops what it cannot sequence before the caller gives up."""
        loop = asyncio.get_running_loop()
        while (item := await self.outbox.get()) is not None:
            request, deadline = item
            future = self.waiting.get(request.correlation_id)
            if future is None or future.done():
                continue  # its caller has gone (cancelled, or timed out and told so): not sent
            left = deadline - loop.time()
            if left <= 0:
                self.waiting.pop(request.correlation_id, None)
                future.set_result(
                    Refused(
                        Reason.UNAVAILABLE,
                        "not sent: the caller's deadline had passed; resubmit the same "
                        "instruction id",
                    )
                )
                continue
            request.timeout_ms = max(1, int(left * 1000))
            self.sent.add(request.correlation_id)
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.reachability.succeeded(self.opened)
                future = self.waiting.pop(response.correlation_id, None)
                self.sent.discard(response.correlation_id)
                if future is not None and not future.done():
                    future.set_result(wire.submit_result_from_proto(response))
        except grpc.aio.AioRpcError as error:
            if not self.reachability.failed(error):  # an outage is logged once, there
                log.warning(
                    "bridge stream broke",
                    extra={"code": error.code().name, "details": error.details()},
                )
        finally:
            self.open = False
            # end the request stream too, or its consumer task is left pending until garbage
            # collection, which logs it as destroyed while pending
            self.outbox.put_nowait(None)
            for correlation_id, future in self.waiting.items():
                if not future.done():
                    future.set_result(
                        self.undecided(correlation_id, "the link to the bridge broke")
                    )
            self.waiting.clear()
            self.sent.clear()

    def undecided(self, correlation_id: int, what: str) -> Refused:
        """OUTCOME_UNKNOWN once the request was handed to the call, UNAVAILABLE before."""
        if correlation_id in self.sent:
            return Refused(
                Reason.OUTCOME_UNKNOWN,
                f"{what} with the instruction handed to it: it may or may not have settled; "
                "resubmit the same instruction id",
            )
        return Refused(
            Reason.UNAVAILABLE,
            f"{what} before the instruction was sent; resubmit the same instruction id",
        )

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.call.cancel()


class BridgeLink:
    def __init__(
        self, *stubs: pb_grpc.BridgeLedgerStub, reachability: Reachability | None = None
    ) -> None:
        self.stubs = stubs
        self.reachability = reachability or Reachability("bridge")
        self._current = 0
        self._generation = 0  # bumped on each move to another bridge
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None

    async def submit(self, envelope: Envelope, timeout: float = 30.0) -> Result:
        generation = self._generation
        result = await self._submit_once(envelope, timeout)
        if len(self.stubs) == 1:
            return result
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, FAILOVER_SECONDS)
        tried = 1
        while _undecided(result) and loop.time() < deadline:
            if generation == self._generation:  # nobody moved on meanwhile: move on
                await self._next_bridge()
            if tried % len(self.stubs) == 0:
                await asyncio.sleep(FAILOVER_PAUSE)
            tried += 1
            generation = self._generation
            result = await self._submit_once(envelope, max(0.1, deadline - loop.time()))
        return result

    async def _next_bridge(self) -> None:
        self._current = (self._current + 1) % len(self.stubs)
        self._generation += 1
        log.info("trying the next bridge address", extra={"index": self._current})
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.close()

    async def _submit_once(self, envelope: Envelope, timeout: float) -> Result:
        stream = self._stream
        if stream is None or not stream.open:
            stream = self._stream = _Stream(self.stubs[self._current], self.reachability)
        correlation_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        stream.waiting[correlation_id] = future
        request = pb.SubmitRequest(
            correlation_id=correlation_id, instruction=wire.envelope_to_proto(envelope)
        )
        # the bridge need not settle it after the caller of the RPC being served has gone
        deadline = min(loop.time() + timeout, call_deadline() or math.inf)
        stream.outbox.put_nowait((request, deadline))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            stream.waiting.pop(correlation_id, None)
            return stream.undecided(correlation_id, f"no answer from the bridge within {timeout} s")
        finally:  # answered, timed out or cancelled: a request still queued is not sent
            stream.waiting.pop(correlation_id, None)
            stream.sent.discard(correlation_id)

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


def _undecided(result: Result) -> bool:
    """Not taken by this bridge process (standing by, broken, or it stopped leading): another
    may take it. Resubmitting the same instruction id is safe either way."""
    return isinstance(result, Refused) and result.reason in (
        Reason.UNAVAILABLE,
        Reason.OUTCOME_UNKNOWN,
    )
