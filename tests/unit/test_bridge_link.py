"""A central bank node's link to the bridge: what a caller hears when the stream fails.

The Submit call is a stand-in that takes requests from the link's stream at the pace a test
sets and then breaks, so what was handed to the call and what was still queued is known; or
records what the link writes, or answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge.crypto import FastVerifier
from bridge.domain import Envelope, Outcome, Pay, Receipt, endorsement_message
from bridge.errors import Reason, Refused
from bridge.signing import sign_as_party
from participants.central_bank.bridge_link import MAX_BATCH, BridgeLink, Endorser
from tests.factories import Network, network, pay


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
            message = await anext(self.requests)
            self.taken.append([r.correlation_id for r in message.batch or (message,)])
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
    """Every instruction of the message the call took may have settled (OUTCOME_UNKNOWN); the
    one still queued was never sent (UNAVAILABLE); all are not decided."""
    net = network()
    stub = Stub(take=1)
    link = BridgeLink(stub)  # type: ignore[arg-type]
    sent = [
        asyncio.create_task(link.submit(pay(net, "ICBC", "CCB", amount))) for amount in (10, 11)
    ]
    while not (stub.calls and stub.calls[0].taken):
        await asyncio.sleep(0.01)
    queued = asyncio.create_task(link.submit(pay(net, "ICBC", "CCB", 20)))
    await asyncio.sleep(0.05)  # on the link's queue: the call takes no more
    (call,) = stub.calls
    assert len(call.taken[0]) == 2  # both went in one message
    call.release.set()
    for task in sent:
        first = await task
        assert isinstance(first, Refused)
        assert first.reason is Reason.OUTCOME_UNKNOWN
        assert first.reason.retryable
    second = await queued
    assert isinstance(second, Refused)
    assert second.reason is Reason.UNAVAILABLE
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
    written = [
        r.instruction.instruction.instruction_id
        for message in call.written
        for r in message.batch or (message,)
    ]
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


def bank_signed(net: Network, amount: int) -> Envelope:
    """A payment signed by ICBC alone, as a bank sends it to its central bank's node."""
    body = Pay(f"batch-{amount}", "ICBC", 2**40, "CCB", "CNY", amount, "", signed_at=2**40 - 60_000)
    return sign_as_party(Envelope.of(body), "ICBC", net.keys["ICBC"])


async def test_what_was_queued_meanwhile_goes_as_one_message_under_one_endorsement() -> None:
    """Instructions queued while the stream was busy leave as one message, their legs endorsed
    by one signature over their Merkle root; each endorsement verifies from its own path."""
    net = network()
    stub = RecordingStub()
    link = BridgeLink(stub, endorser=Endorser("PBOC", net.keys["PBOC"]))  # type: ignore[arg-type]
    envelopes = [bank_signed(net, amount) for amount in (1, 2, 3)]
    waiting = [
        asyncio.create_task(link.submit(e, timeout=5.0, endorse=("ICBC",))) for e in envelopes
    ]
    while not stub.calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # all three queued before the stream writes
    stub.calls[0].go.set()
    while not stub.calls[0].written:
        await asyncio.sleep(0.01)
    (message,) = stub.calls[0].written
    assert not message.HasField("instruction")
    assert [r.correlation_id for r in message.batch] == [1, 2, 3]
    sent = [wire.envelope_from_proto(r.instruction) for r in message.batch]
    endorsements = [e.endorsement("ICBC") for e in sent]
    assert all(e is not None and e.signer == "PBOC" and e.size == 3 for e in endorsements)
    assert len({e.value for e in endorsements if e is not None}) == 1  # one signature
    assert [e.index for e in endorsements if e is not None] == [0, 1, 2]
    for envelope, endorsement in zip(sent, endorsements, strict=True):
        own = envelope.party_signature("ICBC")
        assert own is not None
        assert endorsement is not None
        message_signed = endorsement_message(envelope.body_bytes, own.value, endorsement)
        assert message_signed is not None
        assert FastVerifier().verify(net.keys["PBOC"].public_key, message_signed, endorsement.value)
    for task in waiting:
        task.cancel()
    await link.close()


class AnsweringCall:
    """A Submit call that answers every instruction of each message, all in one message:
    refused when its amount is odd, settled when even."""

    def __init__(self, requests: AsyncIterator[pb.SubmitRequest]) -> None:
        self.requests = requests

    def __aiter__(self) -> AnsweringCall:
        return self

    async def __anext__(self) -> pb.SubmitResponse:
        message = await anext(self.requests)
        answers = []
        for request in message.batch or (message,):
            body = wire.envelope_from_proto(request.instruction).body
            assert isinstance(body, Pay)
            result: Receipt | Refused = (
                Refused(Reason.INSUFFICIENT_FUNDS, f"{body.instruction_id}: no funds")
                if body.amount % 2
                else Receipt("ICBC", body.instruction_id, b"\0" * 32, Outcome.SETTLED, 1)
            )
            answers.append(wire.submit_response_to_proto(request.correlation_id, result))
        return pb.SubmitResponse(batch=answers)

    def cancel(self) -> None:
        pass


class AnsweringStub:
    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        return AnsweringCall(requests)


async def test_each_instruction_of_a_batch_gets_its_own_answer() -> None:
    """A refusal of one instruction of a batch reaches its caller alone; the others settle."""
    net = network()
    link = BridgeLink(AnsweringStub(), endorser=Endorser("PBOC", net.keys["PBOC"]))  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(
            link.submit(bank_signed(net, amount), timeout=5.0, endorse=("ICBC",))
            for amount in (2, 3, 4)
        )
    )
    assert [type(r).__name__ for r in results] == ["Receipt", "Refused", "Receipt"]
    refused = results[1]
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.INSUFFICIENT_FUNDS
    assert "batch-3" in refused.message
    await link.close()


async def test_a_leg_its_bank_did_not_sign_is_refused_before_it_is_queued() -> None:
    """The node endorses only a signed leg: an unsigned one is refused, nothing is sent."""
    net = network()
    stub = RecordingStub()
    link = BridgeLink(stub, endorser=Endorser("PBOC", net.keys["PBOC"]))  # type: ignore[arg-type]
    unsigned = Envelope.of(
        Pay("batch-9", "ICBC", 2**40, "CCB", "CNY", 9, "", signed_at=2**40 - 60_000)
    )
    result = await link.submit(unsigned, endorse=("ICBC",))
    assert isinstance(result, Refused)
    assert result.reason is Reason.MISSING_SIGNATURE
    assert stub.calls == []
    await link.close()


class OneAnswerCall:
    """A Submit call that gives every instruction of each message the same answer."""

    def __init__(self, requests: AsyncIterator[pb.SubmitRequest], answer: Refused | None) -> None:
        self.requests = requests
        self.answer = answer
        self.seen: list[str] = []

    def __aiter__(self) -> OneAnswerCall:
        return self

    async def __anext__(self) -> pb.SubmitResponse:
        message = await anext(self.requests)
        answers = []
        for request in message.batch or (message,):
            body = wire.envelope_from_proto(request.instruction).body
            self.seen.append(body.instruction_id)
            result: Receipt | Refused = self.answer or Receipt(
                "ICBC", body.instruction_id, b"\0" * 32, Outcome.SETTLED, 7
            )
            answers.append(wire.submit_response_to_proto(request.correlation_id, result))
        return pb.SubmitResponse(batch=answers)

    def cancel(self) -> None:
        pass


class OneAnswerStub:
    """One bridge process: a standby (not the leader), a leader that settles, or one that
    refuses for good."""

    def __init__(self, answer: Refused | None) -> None:
        self.answer = answer
        self.calls: list[OneAnswerCall] = []

    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        call = OneAnswerCall(requests, self.answer)
        self.calls.append(call)
        return call

    def seen(self) -> list[str]:
        return [i for call in self.calls for i in call.seen]


STANDING_BY = Refused(Reason.UNAVAILABLE, "not the leader: this bridge process stands by")


async def test_a_node_given_several_bridges_resubmits_to_the_next_until_one_leads() -> None:
    """An instruction a standby answers UNAVAILABLE goes, under the same id, to the next bridge
    address; the leader's receipt reaches the caller, and the link stays on the leader."""
    net = network()
    standby, leader = OneAnswerStub(STANDING_BY), OneAnswerStub(None)
    link = BridgeLink(standby, leader)  # type: ignore[arg-type]
    first = await link.submit(pay(net, "ICBC", "CCB", 10, instruction_id="fo-1"), timeout=5.0)
    assert isinstance(first, Receipt), first
    assert first.instruction_id == "fo-1"
    assert standby.seen() == ["fo-1"]
    assert leader.seen() == ["fo-1"]
    second = await link.submit(pay(net, "ICBC", "CCB", 11, instruction_id="fo-2"), timeout=5.0)
    assert isinstance(second, Receipt)
    assert standby.seen() == ["fo-1"]  # not asked again
    assert leader.seen() == ["fo-1", "fo-2"]
    await link.close()


async def test_a_final_refusal_is_not_resubmitted_to_another_bridge() -> None:
    """A refusal (final) is the answer: the link does not try it at the other addresses."""
    net = network()
    refusing = OneAnswerStub(Refused(Reason.INSUFFICIENT_FUNDS, "no funds"))
    other = OneAnswerStub(None)
    link = BridgeLink(refusing, other)  # type: ignore[arg-type]
    result = await link.submit(pay(net, "ICBC", "CCB", 10, instruction_id="fo-3"), timeout=5.0)
    assert isinstance(result, Refused)
    assert result.reason is Reason.INSUFFICIENT_FUNDS
    assert other.seen() == []
    await link.close()


async def test_when_no_bridge_leads_the_caller_hears_not_decided() -> None:
    """Every address standing by: after trying them all the caller gets the retryable answer."""
    net = network()
    stubs = [OneAnswerStub(STANDING_BY), OneAnswerStub(STANDING_BY)]
    link = BridgeLink(*stubs, reachability=None)  # type: ignore[arg-type]
    result = await link.submit(pay(net, "ICBC", "CCB", 10, instruction_id="fo-4"), timeout=1.0)
    assert isinstance(result, Refused)
    assert result.reason is Reason.UNAVAILABLE
    assert result.reason.retryable
    assert all(stub.seen() and set(stub.seen()) == {"fo-4"} for stub in stubs)
    await link.close()


class CountingStub:
    """Answers as `AnsweringCall` does and keeps how many instructions each message held."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        sizes = self.sizes

        async def counted() -> AsyncIterator[pb.SubmitRequest]:
            async for message in requests:
                sizes.append(len(message.batch) or 1)
                yield message

        return AnsweringCall(counted())


async def test_a_group_is_forwarded_together_and_each_gets_its_own_answer_in_order() -> None:
    """`submit_many`: one message for the group, one answer per instruction in order (a leg
    its bank did not sign refused alone, before anything is queued)."""
    net = network()
    stub = CountingStub()
    link = BridgeLink(stub, endorser=Endorser("PBOC", net.keys["PBOC"]))  # type: ignore[arg-type]
    unsigned = Envelope.of(
        Pay("batch-8", "ICBC", 2**40, "CCB", "CNY", 8, "", signed_at=2**40 - 60_000)
    )
    group = [(bank_signed(net, amount), ("ICBC",)) for amount in (2, 3, 4)]
    results = await link.submit_many([*group[:2], (unsigned, ("ICBC",)), group[2]], timeout=5.0)
    assert [type(r).__name__ for r in results] == ["Receipt", "Refused", "Refused", "Receipt"]
    assert isinstance(results[1], Refused)
    assert results[1].reason is Reason.INSUFFICIENT_FUNDS
    assert isinstance(results[2], Refused)
    assert results[2].reason is Reason.MISSING_SIGNATURE
    assert [r.instruction_id for r in results if isinstance(r, Receipt)] == ["batch-2", "batch-4"]
    assert stub.sizes == [3]
    await link.close()


async def test_a_group_larger_than_a_message_goes_in_several_and_all_are_answered() -> None:
    """A group of MAX_BATCH + 3 instructions leaves as two messages (MAX_BATCH, then 3), each
    instruction answered once, in order."""
    net = network()
    stub = CountingStub()
    link = BridgeLink(stub, endorser=Endorser("PBOC", net.keys["PBOC"]))  # type: ignore[arg-type]
    amounts = [2 * n for n in range(1, MAX_BATCH + 4)]
    group = [(bank_signed(net, amount), ("ICBC",)) for amount in amounts]
    results = await link.submit_many(group, timeout=30.0)
    assert [r.instruction_id for r in results if isinstance(r, Receipt)] == [
        f"batch-{amount}" for amount in amounts
    ]
    assert stub.sizes == [MAX_BATCH, 3]
    await link.close()


class LateAnsweringCall:
    """A Submit call that takes one message and answers it only once its caller has stopped
    waiting for the answer (the answer and the caller's timeout meet in one loop pass)."""

    def __init__(self, requests: AsyncIterator[pb.SubmitRequest], link: BridgeLink) -> None:
        self.requests = requests
        self.link = link
        self.answered = False

    def __aiter__(self) -> LateAnsweringCall:
        return self

    async def __anext__(self) -> pb.SubmitResponse:
        if self.answered:
            await asyncio.Event().wait()  # answered once; the link closes the call
        message = await anext(self.requests)
        stream = self.link._stream
        assert stream is not None
        answers, _ = stream.waiting[message.correlation_id]
        while not answers.done.done():  # the caller gives up (its timeout)
            await asyncio.sleep(0)
        self.answered = True
        receipt = Receipt("ICBC", "late-1", b"\0" * 32, Outcome.SETTLED, 1)
        return wire.submit_response_to_proto(message.correlation_id, receipt)

    def cancel(self) -> None:
        pass


class LateAnsweringStub:
    def __init__(self) -> None:
        self.link: BridgeLink | None = None

    def Submit(self, requests: AsyncIterator[pb.SubmitRequest]) -> Any:  # noqa: N802  # the stub's name
        assert self.link is not None
        return LateAnsweringCall(requests, self.link)


async def test_an_instruction_sent_but_not_answered_in_time_is_outcome_unknown() -> None:
    """An instruction handed to the call whose answer comes just after its caller's timeout is
    OUTCOME_UNKNOWN (it may have settled), never UNAVAILABLE "before it was sent"."""
    net = network()
    stub = LateAnsweringStub()
    link = stub.link = BridgeLink(stub)  # type: ignore[arg-type]
    result = await link.submit(pay(net, "ICBC", "CCB", 10), timeout=0.05)
    assert isinstance(result, Refused)
    assert result.reason is Reason.OUTCOME_UNKNOWN, result.message
    assert "may or may not have settled" in result.message
    await link.close()
