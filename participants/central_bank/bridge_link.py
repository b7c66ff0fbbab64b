"""A central bank node's link to the bridge: one persistent Submit stream, many instructions.

Instructions are queued and written onto one bidirectional stream; responses come back tagged
with their correlation id and resolve the waiting caller. A request whose caller has gone
before it is written is not sent; each one sent carries the time its caller still waits, so
the bridge drops it unsettled if it cannot sequence it in time. If the stream breaks (or no
answer comes in time), a caller whose instruction was already handed to the stream gets
OUTCOME_UNKNOWN (it may or may not have settled) and one whose instruction was still queued
gets UNAVAILABLE (nothing was sent); both are "not decided": resubmitting the same instruction
id is safe, the bridge is idempotent. The next submission opens a new stream.

Whatever callers queued while the previous message was on its way goes out as one message
(a `batch` of requests, at most `MAX_BATCH`; a lone instruction goes alone, at once), and the
legs the node endorses (`submit(..., endorse=parties)`) are endorsed there, for the whole
message, with one signature over the Merkle root of its legs (`bridge.signing.endorse_legs`).
Each instruction keeps its own correlation id and answer: one refused by the bridge does not
affect the others of its message. A caller may hand over a group of instructions at once
(`submit_many`: a bank's batch): they are queued together and the caller waits once for the
group's answers (`Answers`), each instruction's set as its response comes in.

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
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as pb_grpc
from bridge.crypto import Signer
from bridge.domain import Envelope, ParticipantId
from bridge.errors import Reason, Refused
from bridge.node.shedding import call_deadline
from bridge.settlement import Result
from bridge.signing import endorse_legs
from participants.central_bank.answers import Answers
from participants.central_bank.reachability import Reachability

log = logging.getLogger("participants.bridge_link")
FAILOVER_SECONDS = 10.0
FAILOVER_PAUSE = 0.2  # between two rounds over every bridge address
MAX_BATCH = 512  # instructions in one Submit message at most


class Endorser:
    """The central bank whose node forwards, and its key: endorses the legs of a batch."""

    def __init__(self, central_bank: ParticipantId, key: Signer) -> None:
        self.central_bank = central_bank
        self.key = key


# an instruction to forward and the parties whose legs the node endorses as it sends it
Submission = tuple[Envelope, tuple[ParticipantId, ...]]
# one queued instruction: correlation id, envelope, parties whose legs the node endorses as it
# sends them, and the event-loop time by which its caller needs the answer
_Queued = tuple[int, Envelope, tuple[ParticipantId, ...], float]


class _Stream:
    """One open Submit call and the callers waiting on it."""

    def __init__(
        self,
        stub: pb_grpc.BridgeLedgerStub,
        reachability: Reachability,
        endorser: Endorser | None,
    ) -> None:
        self.reachability = reachability
        self.endorser = endorser
        # callers' groups of instructions, in the order they were queued (None: the end)
        self.outbox: asyncio.Queue[list[_Queued] | None] = asyncio.Queue()
        # correlation id -> the answers of the caller's group, and the instruction's index there
        self.waiting: dict[int, tuple[Answers[Result], int]] = {}
        self.sent: set[int] = set()  # handed to the call: the bridge may have acted on them
        self.open = True
        self.opened = time.monotonic()
        self.call = stub.Submit(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.SubmitRequest]:
        """The queued requests whose callers still wait, each with the time left to it (so
        the bridge drops what it cannot sequence before the caller gives up): whatever was
        queued meanwhile in one message (at most `MAX_BATCH`: the rest goes next), its legs
        endorsed with one signature."""
        loop = asyncio.get_running_loop()
        carried: list[_Queued] = []  # queued beyond the last message's `MAX_BATCH`
        ended = False
        while carried or not ended:
            if carried:
                queued, carried = carried, []
            else:
                group = await self.outbox.get()
                if group is None:
                    break
                queued = list(group)
            while len(queued) < MAX_BATCH and not ended and not self.outbox.empty():
                group = self.outbox.get_nowait()
                if group is None:
                    ended = True
                else:
                    queued.extend(group)
            if len(queued) > MAX_BATCH:
                queued, carried = queued[:MAX_BATCH], queued[MAX_BATCH:]
            now = loop.time()
            ready = [item for item in queued if self._still_wanted(item, now)]
            requests = self._endorsed(ready, now)
            if not requests:
                continue
            for request in requests:
                self.sent.add(request.correlation_id)
            yield requests[0] if len(requests) == 1 else pb.SubmitRequest(batch=requests)

    def _still_wanted(self, item: _Queued, now: float) -> bool:
        """Whether the caller of `item` still waits for it (if not, it is not sent)."""
        correlation_id, _, _, deadline = item
        waiting = self.waiting.get(correlation_id)
        if waiting is None or not waiting[0].waits(waiting[1]):
            return False  # its caller has gone (cancelled, or timed out and told so)
        if deadline <= now:
            del self.waiting[correlation_id]
            answers, index = waiting
            answers.answer(
                index,
                Refused(
                    Reason.UNAVAILABLE,
                    "not sent: the caller's deadline had passed; resubmit the same instruction id",
                ),
            )
            return False
        return True

    def _endorsed(self, items: list[_Queued], now: float) -> list[pb.SubmitRequest]:
        """The requests of `items`, with the legs to endorse endorsed by one signature over
        the Merkle root of all of them."""
        legs = [(envelope, party) for _, envelope, parties, _ in items for party in parties]
        if legs:
            if self.endorser is None:
                raise RuntimeError("this link endorses nothing: no endorser given")
            endorsements = iter(endorse_legs(legs, self.endorser.central_bank, self.endorser.key))
        requests = []
        for correlation_id, envelope, parties, deadline in items:
            for _ in parties:
                envelope = envelope.with_signature(next(endorsements))
            requests.append(
                pb.SubmitRequest(
                    correlation_id=correlation_id,
                    instruction=wire.envelope_to_proto(envelope),
                    timeout_ms=max(1, int((deadline - now) * 1000)),
                )
            )
        return requests

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.reachability.succeeded(self.opened)
                for response in message.batch or (message,):
                    waiting = self.waiting.pop(response.correlation_id, None)
                    self.sent.discard(response.correlation_id)
                    if waiting is not None:
                        answers, index = waiting
                        answers.answer(index, wire.submit_result_from_proto(response))
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
            for correlation_id, (answers, index) in self.waiting.items():
                answers.answer(
                    index, self.undecided(correlation_id, "the link to the bridge broke")
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
        self,
        *stubs: pb_grpc.BridgeLedgerStub,
        reachability: Reachability | None = None,
        endorser: Endorser | None = None,
    ) -> None:
        self.stubs = stubs
        self.endorser = endorser
        self.reachability = reachability or Reachability("bridge")
        self._current = 0
        self._generation = 0  # bumped on each move to another bridge
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None

    async def submit(
        self,
        envelope: Envelope,
        timeout: float = 30.0,
        *,
        endorse: tuple[ParticipantId, ...] = (),
    ) -> Result:
        """Forward `envelope`, with the legs of `endorse` endorsed by this node as it goes
        (each party must have signed); the bridge's receipt or refusal."""
        (result,) = await self.submit_many([(envelope, endorse)], timeout)
        return result

    async def submit_many(
        self, submissions: Sequence[Submission], timeout: float = 30.0
    ) -> list[Result]:
        """Forward each `(envelope, endorse)` as `submit` does, queued together and awaited as
        one group; the bridge's receipt or refusal of each, in order."""
        results: list[Result | None] = [None] * len(submissions)
        todo = []
        for index, (envelope, endorse) in enumerate(submissions):
            missing = [party for party in endorse if envelope.party_signature(party) is None]
            if missing:
                results[index] = Refused(
                    Reason.MISSING_SIGNATURE, f"the instruction is not signed by {missing[0]}"
                )
            else:
                todo.append(index)
        generation = self._generation
        await self._submit_once(submissions, todo, results, timeout)
        if len(self.stubs) > 1:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(timeout, FAILOVER_SECONDS)
            tried = 1
            while (todo := [i for i in todo if _undecided(results[i])]) and (
                loop.time() < deadline
            ):
                if generation == self._generation:  # nobody moved on meanwhile: move on
                    await self._next_bridge()
                if tried % len(self.stubs) == 0:
                    await asyncio.sleep(FAILOVER_PAUSE)
                tried += 1
                generation = self._generation
                left = max(0.1, deadline - loop.time())
                await self._submit_once(submissions, todo, results, left)
        return cast(list[Result], results)  # every one set: refused above or answered

    async def _next_bridge(self) -> None:
        self._current = (self._current + 1) % len(self.stubs)
        self._generation += 1
        log.info("trying the next bridge address", extra={"index": self._current})
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.close()

    async def _submit_once(
        self,
        submissions: Sequence[Submission],
        indexes: list[int],
        results: list[Result | None],
        timeout: float,
    ) -> None:
        """Queue the submissions at `indexes` as one group on the current stream and set
        their `results` from this bridge's answers (or its failure to answer)."""
        if not indexes:
            return
        stream = self._stream
        if stream is None or not stream.open:
            stream = self._stream = _Stream(
                self.stubs[self._current], self.reachability, self.endorser
            )
        loop = asyncio.get_running_loop()
        # the bridge need not settle it after the caller of the RPC being served has gone
        deadline = min(loop.time() + timeout, call_deadline() or math.inf)
        answers: Answers[Result] = Answers(len(indexes))
        queued: list[_Queued] = []
        for slot, index in enumerate(indexes):
            correlation_id = next(self._ids)
            stream.waiting[correlation_id] = (answers, slot)
            envelope, endorse = submissions[index]
            queued.append((correlation_id, envelope, endorse, deadline))
        stream.outbox.put_nowait(queued)
        try:
            # not wait_for: it cancels `done` and then waits a loop pass more, in which an
            # answer read meanwhile would be dropped and its request taken for one never sent
            await asyncio.wait((answers.done,), timeout=timeout)
        finally:  # answered, timed out or cancelled: a request still queued is not sent
            answers.done.cancel()  # no answer is taken from here on (a no-op once done)
            for slot, (correlation_id, *_) in enumerate(queued):
                result = answers.results[slot]
                if result is None:
                    result = stream.undecided(
                        correlation_id, f"no answer from the bridge within {timeout} s"
                    )
                results[indexes[slot]] = result
                stream.waiting.pop(correlation_id, None)
                stream.sent.discard(correlation_id)

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


def _undecided(result: Result | None) -> bool:
    """Not taken by this bridge process (standing by, broken, or it stopped leading): another
    may take it. Resubmitting the same instruction id is safe either way."""
    return isinstance(result, Refused) and result.reason in (
        Reason.UNAVAILABLE,
        Reason.OUTCOME_UNKNOWN,
    )
