"""Asking another central bank's node to endorse its bank's leg of dual PvPs, in batches.

A dual-signed PvP between banks of two central banks needs both central banks' endorsements.
The proposer's node asks the counterparty's node for its endorsement; under load one unary
call per PvP costs both nodes more than the signature checks themselves. `PeerEndorser`
queues the requests for one peer and sends whatever is waiting as one `EndorseDualPvps`
call (at most `max_batch`, at most `in_flight` calls at a time), so the per-call cost is
shared by every PvP of the batch while a lone PvP still goes out at once. The proposer's node
endorses its own banks' legs of the call's PvPs there, with one signature over their Merkle
root (the peer checks that endorsement, once per call, before it endorses its side, also with
one signature for the call). A bank's batch is handed over as one group (`endorse_many`): its
legs are queued together and their caller waits once for all of their answers.

The batches go over one `EndorseStream` call per peer, kept open: a message each way per batch,
where a unary call cost both nodes several times as much (docs/performance.md). Each request
carries a correlation id, which its answer repeats; each waits at most `timeout` for it. A
request that times out ends the stream (a peer that keeps it open but stops answering is not
asked on it again): every request outstanding on it answers UNAVAILABLE, and the next batch
opens a new one. A stream that breaks answers the requests still outstanding on it and is
opened again for the next batch; its failures are logged once per episode. A new stream carries
one request until its first answer: a peer that does not implement the stream (UNIMPLEMENTED)
is asked with the unary `EndorseDualPvps` call instead, every request waiting for that stream
included, and offered the stream again after `STREAM_RETRY_SECONDS`. Whatever fails on the
way, an endorsement changes nothing and nothing was submitted: the legs are UNAVAILABLE (not
decided: resubmit the same instruction id), never a final refusal; only a peer's refusal of
this node as its caller (UNAUTHENTICATED, PERMISSION_DENIED) is passed on as given.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import Signer
from bridge.domain import Envelope, ParticipantId, Signature
from bridge.errors import Reason, Refused
from bridge.node.episodes import FailureEpisode
from bridge.signing import endorse_legs
from bridge.status import refusal_from_rpc_error
from participants.central_bank.answers import Answers

__all__ = ["Endorsed", "PeerEndorser"]

log = logging.getLogger("participants.peer_endorser")

# a leg's endorsements, (ours, theirs), or why there are none
Endorsed = tuple[Signature, Signature] | Refused
# a PvP, the party whose leg this node endorses, and the answers of its caller's group with
# its index there
_Waiting = tuple[Envelope, ParticipantId, Answers[Endorsed], int]
# seconds before a peer that did not implement EndorseStream is offered it again (it may have
# been upgraded meanwhile)
STREAM_RETRY_SECONDS = 300.0
ABANDONED_HELD = 1024  # ids of requests whose callers left, held per stream for a late answer


class StreamEnded(Exception):
    """Raised when the endorsement stream ended without an error status from the peer."""


class StreamClosed(StreamEnded):
    """Raised when this node closed or cancelled the endorsement stream itself."""


class PeerCallFailed(Exception):
    """A call to the peer node that failed with a status, as logged."""


class _Stream:
    """One open EndorseStream call: the requests outstanding on it by correlation id, and the
    task that reads its answers. Once it has ended, `ended` holds why and every request that
    was outstanding has that failure as its answer."""

    def __init__(self, call: Any, on_end: Callable[[BaseException], None]) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[pb.EndorseStreamResponse]] = {}
        # ids whose callers left before their answer (cancelled): a late answer is expected;
        # the oldest are forgotten beyond ABANDONED_HELD
        self.abandoned: dict[int, None] = {}
        self.stray_answers = 0  # answers under an id never asked on it, or answered already
        self.ended: BaseException | None = None
        # set at its first answer or at its end: until then it carries one request only
        self.confirmed = asyncio.Event()
        self._on_end = on_end
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                if response is None:  # gRPC logged an answer that does not decode
                    self.end(StreamEnded("the peer node sent an answer that does not decode"))
                    return
                self.confirmed.set()
                future = self.pending.pop(response.correlation_id, None)
                if future is None:
                    self._stray(response.correlation_id)
                elif not future.done():
                    future.set_result(response)
            self.end(StreamEnded("the peer node ended the endorsement stream"))
        except grpc.aio.AioRpcError as error:
            self.end(error)
        except asyncio.CancelledError:  # the call cancelled here (closed, or a write timed out)
            self.end(StreamClosed("the endorsement stream was cancelled"))
            raise
        except Exception as error:  # a fault of this node: the stream is given up
            log.exception("reading the endorsement stream failed unexpectedly")
            self.end(error)

    def abandon(self, correlation_id: int) -> None:
        """The caller of `correlation_id` left before its answer: drop it when it comes."""
        if self.pending.pop(correlation_id, None) is not None and self.ended is None:
            self.abandoned[correlation_id] = None
            if len(self.abandoned) > ABANDONED_HELD:
                del self.abandoned[next(iter(self.abandoned))]

    def _stray(self, correlation_id: int) -> None:
        """An answer no request waits for: dropped; logged unless its caller just left (the
        peer answered an id never asked on this stream, or one it had answered already)."""
        if correlation_id in self.abandoned:
            del self.abandoned[correlation_id]
        else:
            self.stray_answers += 1
            if self.stray_answers == 1:  # once per stream: a faulty peer does not flood the log
                log.warning(
                    "the peer node answered an endorsement request never asked on this stream, "
                    "or answered it twice; dropped",
                    extra={"correlation_id": correlation_id},
                )

    def end(self, error: BaseException) -> None:
        """The stream is over: every request outstanding on it fails with `error`."""
        if self.ended is not None:
            return
        self.ended = error
        self.confirmed.set()
        self.call.cancel()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        self._on_end(error)


class PeerEndorser:
    """Batches endorsement requests to one peer central bank node, on one open stream
    (`stream` False: with the unary call only)."""

    def __init__(
        self,
        stub: pb_grpc.CentralBankStub,
        central_bank: ParticipantId,
        key: Signer,
        *,
        timeout: float,
        max_batch: int = 256,
        in_flight: int = 2,
        peer: str = "the peer",
        stream: bool = True,
    ) -> None:
        self.stub = stub
        self.central_bank = central_bank
        self.key = key
        self.timeout = timeout
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.stream = stream  # False: the unary call only (tools, measurements)
        self._waiting: list[_Waiting] = []
        self._senders = 0
        self._stream: _Stream | None = None
        self._correlation_ids = itertools.count(1)
        self._writing = asyncio.Lock()  # one write at a time on the stream
        self._unary_until = 0.0  # event-loop time until which the unary call is used
        self._closed = False  # closed for good: no stream is opened any more
        self.failures = FailureEpisode(log, f"endorsements by {peer}'s node")

    async def close(self) -> None:
        """End the open stream, if any (its outstanding requests answer UNAVAILABLE); for
        good: later requests answer UNAVAILABLE too."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.end(StreamClosed("the endorsement stream was closed"))
            await asyncio.gather(stream.reader, return_exceptions=True)

    async def endorsements(
        self, envelope: Envelope, party: ParticipantId
    ) -> tuple[Signature, Signature]:
        """This node's endorsement of `party`'s leg of the dual PvP `envelope` and the peer's
        of its bank's leg (both in batches); raises Refused."""
        (result,) = await self.endorse_many([(envelope, party)])
        if isinstance(result, Refused):
            raise result
        return result

    async def endorse_many(self, legs: Sequence[tuple[Envelope, ParticipantId]]) -> list[Endorsed]:
        """`endorsements` of each `(envelope, party)`, queued together and awaited as one
        group: the endorsements or the refusal of each, in order."""
        answers: Answers[Endorsed] = Answers(len(legs))
        self._waiting.extend(
            (envelope, party, answers, index) for index, (envelope, party) in enumerate(legs)
        )
        if self._senders < self.in_flight:
            self._senders += 1
            asyncio.get_running_loop().create_task(self._send())
        await answers.done
        return cast(list[Endorsed], answers.results)  # every one answered

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                try:
                    await self._call(batch)
                except BaseException as error:  # those legs are not endorsed, whatever it was
                    if isinstance(error, Exception):  # a fault of this node
                        log.exception("an endorsement batch failed unexpectedly")
                    failed = _not_decided(
                        "the node failed while asking for the counterparty's endorsement"
                    )
                    for _, _, answers, index in batch:
                        answers.answer(index, failed)  # those still unanswered
                    if not isinstance(error, Exception):  # this task cancelled, or exiting
                        raise
        finally:
            self._senders -= 1

    async def _call(self, waiting: list[_Waiting]) -> None:
        batch = [item for item in waiting if item[2].waits(item[3])]
        if not batch:
            return
        ours = endorse_legs(
            [(envelope, party) for envelope, party, _, _ in batch], self.central_bank, self.key
        )
        instructions = [
            wire.envelope_to_proto(envelope.with_signature(endorsement))
            for (envelope, _, _, _), endorsement in zip(batch, ours, strict=True)
        ]
        answered = await self._asked(instructions)
        if isinstance(answered, Refused):
            for _, _, answers, index in batch:
                answers.answer(index, answered)
            return
        results: list[pb.EndorsementResult | None] = list(answered)
        if len(results) != len(batch):
            results = [None] * len(batch)  # a peer that answers out of shape endorses nothing
        for (_, _, answers, index), endorsement, result in zip(batch, ours, results, strict=True):
            answers.answer(index, _endorsed(endorsement, result))

    async def _asked(
        self, instructions: list[types.SignedInstruction]
    ) -> Sequence[pb.EndorsementResult] | Refused:
        """The peer's result for each instruction, or why there are none (for every leg)."""
        if self._closed:
            return _stopping()
        loop = asyncio.get_running_loop()
        if self.stream and loop.time() >= self._unary_until:
            try:
                return await self._streamed(instructions)
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    return _stream_failure(error)
                if loop.time() >= self._unary_until:  # once, not once per request waiting
                    log.info("the peer node has no endorsement stream; using EndorseDualPvps")
                    self._unary_until = loop.time() + STREAM_RETRY_SECONDS
        request = pb.EndorseDualPvpsRequest(instructions=instructions)
        try:
            response = await self.stub.EndorseDualPvps(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            self.failures.failed(_cause(error))
            return _peer_failure(error)
        self.failures.succeeded()
        return list(response.results)

    async def _streamed(
        self, instructions: list[types.SignedInstruction]
    ) -> Sequence[pb.EndorsementResult] | Refused:
        """The peer's results over the open stream (opened if none is); raises AioRpcError
        if the stream failed with one (UNIMPLEMENTED included)."""
        correlation_id = next(self._correlation_ids)
        request = pb.EndorseStreamRequest(correlation_id=correlation_id, instructions=instructions)
        stream: _Stream | None = None
        answer: asyncio.Future[pb.EndorseStreamResponse] | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    if self._closed:
                        return _stopping()
                    stream = self._stream
                    if stream is None or stream.ended is not None:
                        stream = self._stream = _Stream(
                            self.stub.EndorseStream(), self._stream_ended
                        )
                        break  # this request is the new stream's first
                    if stream.confirmed.is_set():
                        break
                    await stream.confirmed.wait()  # its first answer, or its end
                    if isinstance(stream.ended, grpc.aio.AioRpcError):
                        raise stream.ended  # UNIMPLEMENTED: asked with the unary call
                    if stream.ended is not None:
                        raise StreamEnded(str(stream.ended))
                answer = stream.pending[correlation_id] = asyncio.get_running_loop().create_future()
                # the write too: a peer that stops reading holds it (gRPC cancels the whole
                # call when a write is cancelled, which ends the stream for the others too)
                try:
                    async with self._writing:
                        await stream.call.write(request)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this task cancelled (its timeout included)
                    # the call was cancelled (closed, or ended after a fault): gRPC raises
                    # that in the writing task, which nobody cancelled
                    stream.end(StreamClosed("the endorsement stream was cancelled"))
                except grpc.aio.AioRpcError as error:
                    stream.end(error)  # the call is over with this status
                except asyncio.InvalidStateError:
                    pass  # the call is over: its reader ends the stream with its status
                response = await answer
        except TimeoutError:
            self.failures.failed(TimeoutError(f"no answer within {self.timeout} s"))
            if stream is not None:  # open but not answering: not asked on it again
                stream.end(StreamClosed(f"a request got no answer within {self.timeout} s"))
            return _not_decided(
                f"the counterparty's central bank node did not endorse within {self.timeout} s"
            )
        except StreamEnded as ended:
            return _not_decided(f"the counterparty's central bank node did not endorse ({ended})")
        finally:
            if stream is not None:
                stream.abandon(correlation_id)  # a no-op once answered
            if answer is not None:  # a failure set by `end` that nobody awaits is retrieved
                if not answer.done():
                    answer.cancel()
                elif not answer.cancelled():
                    answer.exception()
        self.failures.succeeded()
        if response.HasField("refusal"):  # the request refused whole: each leg refused so
            return wire.refusal_from_proto(response.refusal)
        return response.results

    def _stream_ended(self, error: BaseException) -> None:
        """Log a broken stream once per episode; not one closed or cancelled here (a request
        timed out, logged as such), nor one the peer does not implement (no failure: the
        unary call is used instead)."""
        if isinstance(error, grpc.aio.AioRpcError):
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                return
            error = _cause(error)
        if not isinstance(error, StreamClosed):
            self.failures.failed(error)


def _endorsed(ours: Signature, result: pb.EndorsementResult | None) -> Endorsed:
    """A leg's endorsements from our own and the peer's result for it."""
    which = result.WhichOneof("result") if result is not None else None
    if result is not None and which == "endorsement":
        try:
            return ours, wire.signature_from_proto(result.endorsement)
        except Refused as refusal:
            return refusal
    if result is not None and which == "refusal":
        return wire.refusal_from_proto(result.refusal)
    return _not_decided("the peer node answered without a result")


def _peer_failure(error: grpc.aio.AioRpcError) -> Refused:
    """What a bank hears when the peer node's EndorseDualPvps call failed as a whole.

    A refusal with a reason (ErrorInfo) stands as the peer gave it. Anything else failed in
    transport (peer down, stalled past the deadline, cancelled): an endorsement changes nothing
    and nothing went to the bridge, so it is UNAVAILABLE (not decided: resubmit the same id),
    never a final refusal such as INSTRUCTION_EXPIRED."""
    if _has_reason(error):
        return refusal_from_rpc_error(error)
    return _not_endorsed(error)


def _stream_failure(error: grpc.aio.AioRpcError) -> Refused:
    """What a bank hears when the endorsement stream failed with a status: the fate of the
    call, not of each request on it (the peer may never have read them), so UNAVAILABLE (not
    decided), except a peer's refusal of this node as its caller, passed on as given."""
    if _has_reason(error) and error.code() in _CALLER_REFUSED:
        return refusal_from_rpc_error(error)
    return _not_endorsed(error)


_CALLER_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _stopping() -> Refused:
    return _not_decided("the node is stopping")


def _not_endorsed(error: grpc.aio.AioRpcError) -> Refused:
    """The peer's call failed in transport, as the bank hears it (not decided)."""
    return _not_decided(
        f"the counterparty's central bank node did not endorse ({error.code().name}: "
        f"{error.details() or ''})"
    )


def _not_decided(what: str) -> Refused:
    """UNAVAILABLE: `what` went wrong before anything reached the bridge, so the bank may
    resubmit the same instruction id (an endorsement itself changes nothing)."""
    return Refused(
        Reason.UNAVAILABLE, f"{what}; nothing was submitted, resubmit the same instruction id"
    )


def _cause(error: grpc.aio.AioRpcError) -> PeerCallFailed:
    """A failed call as one line for the log (its code and details, not its whole repr)."""
    return PeerCallFailed(f"{error.code().name}: {error.details() or ''}")


def _has_reason(error: grpc.aio.AioRpcError) -> bool:
    return any(key == "grpc-status-details-bin" for key, _ in error.trailing_metadata() or ())
