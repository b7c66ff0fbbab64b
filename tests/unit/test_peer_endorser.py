"""Asking a peer central bank's node for endorsements: a group of legs goes in one request on
an open `EndorseStream` call, answers are matched by correlation id, and every failure leaves
the legs not decided.

The peer is a stand-in servicer on a real gRPC server on loopback: it endorses its bank's leg
of each PvP with its own key (one signature per request), refuses the ones a test names, and
can hold, reorder, break or not implement the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge.domain import Envelope
from bridge.errors import Reason, Refused
from bridge.signing import endorse_legs, sign_as_party
from bridge.status import abort
from participants.central_bank.peer_endorser import PeerEndorser
from tests.factories import Network, dual_pvp, network


class StandInPeer:
    """BOT's node as far as endorsements go: endorses KBANK's leg of every PvP, except those
    with `refuse` as their amount; holds back the answer to a request holding `hold`;
    answers the next `reorder` requests in reverse order, once all are in; aborts the first
    stream UNAVAILABLE at its first request when `break_first`; answers `short` requests with
    one result too few; never answers on its first stream when `wedge_first`; answers each
    request first with an id never asked, then twice (the second time refused) when
    `duplicate`; waits `delay` seconds before each answer; ends each stream at its first
    request with `abort_with` when set."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.refuse = 0
        self.hold = 0
        self.reorder = 0
        self.break_first = False
        self.short = False
        self.wedge_first = False
        self.duplicate = False
        self.delay = 0.0  # seconds before each answer on the stream
        self.abort_with: Refused | None = None
        self.streams = 0
        self.unary_calls: list[list[str]] = []
        self.requests: list[list[str]] = []

    def results(self, instructions: Any) -> list[pb.EndorsementResult]:
        envelopes = [wire.envelope_from_proto(m) for m in instructions]
        amount = lambda e: e.body.pay_amount  # noqa: E731
        wanted = [e for e in envelopes if amount(e) != self.refuse]
        ours = iter(endorse_legs([(e, "KBANK") for e in wanted], "BOT", self.net.keys["BOT"]))
        results = []
        for envelope in envelopes:
            if amount(envelope) == self.refuse:
                refusal = Refused(Reason.INSUFFICIENT_FUNDS, "no funds")
                results.append(pb.EndorsementResult(refusal=wire.refusal_to_proto(refusal)))
            else:
                signature = wire.signature_to_proto(next(ours))
                results.append(pb.EndorsementResult(endorsement=signature))
        return results[:-1] if self.short else results

    async def EndorseDualPvps(  # noqa: N802  # the RPC's name
        self, request: pb.EndorseDualPvpsRequest, context: Any
    ) -> pb.EndorseDualPvpsResponse:
        self.unary_calls.append(ids_of(request.instructions))
        return pb.EndorseDualPvpsResponse(results=self.results(request.instructions))

    async def EndorseStream(  # noqa: N802  # the RPC's name
        self, requests: AsyncIterator[pb.EndorseStreamRequest], context: Any
    ) -> AsyncIterator[pb.EndorseStreamResponse]:
        self.streams += 1
        first_stream = self.streams == 1
        held: list[pb.EndorseStreamRequest] = []
        async for request in requests:
            self.requests.append(ids_of(request.instructions))
            if self.break_first and first_stream:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the peer went away")
            if self.abort_with is not None:
                await abort(context, self.abort_with)
            if self.wedge_first and first_stream:
                continue  # read, never answered
            if self.duplicate:
                refusal = wire.refusal_to_proto(Refused(Reason.INSUFFICIENT_FUNDS, "no funds"))
                results = [pb.EndorsementResult(refusal=refusal)] * len(request.instructions)
                yield pb.EndorseStreamResponse(correlation_id=10**9, results=results)
                yield pb.EndorseStreamResponse(
                    correlation_id=request.correlation_id,
                    results=self.results(request.instructions),
                )
                yield pb.EndorseStreamResponse(
                    correlation_id=request.correlation_id, results=results
                )
                continue
            amounts = [wire.envelope_from_proto(m).body.pay_amount for m in request.instructions]  # type: ignore[attr-defined]
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.hold in amounts:
                continue  # never answered
            held.append(request)
            if len(held) < self.reorder:
                continue
            self.reorder = 0
            for answered in reversed(held):
                yield pb.EndorseStreamResponse(
                    correlation_id=answered.correlation_id,
                    results=self.results(answered.instructions),
                )
            held.clear()


def ids_of(instructions: Any) -> list[str]:
    return [m.instruction.instruction_id for m in instructions]


Serve = Callable[..., Any]


@pytest.fixture
async def loopback() -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    """Serve some `bridge.v1.CentralBank` method handlers on a loopback server; returns a stub
    on a channel to it. Every server and channel is closed at the end."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(handlers: dict[str, Any]) -> pb_grpc.CentralBankStub:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bridge.v1.CentralBank", handlers),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return pb_grpc.CentralBankStub(channel)

    try:
        yield start
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)


@pytest.fixture
def serve(loopback: Callable[[dict[str, Any]], Any]) -> Serve:
    """Start a loopback server for a stand-in peer (with or without the stream); returns a
    stub on a channel to it."""

    async def start(peer: StandInPeer, *, stream: bool = True) -> pb_grpc.CentralBankStub:
        handlers = {
            "EndorseDualPvps": grpc.unary_unary_rpc_method_handler(
                peer.EndorseDualPvps,
                request_deserializer=pb.EndorseDualPvpsRequest.FromString,
                response_serializer=pb.EndorseDualPvpsResponse.SerializeToString,
            )
        }
        if stream:  # without it, a node of a version that does not implement the stream
            handlers["EndorseStream"] = grpc.stream_stream_rpc_method_handler(
                peer.EndorseStream,
                request_deserializer=pb.EndorseStreamRequest.FromString,
                response_serializer=pb.EndorseStreamResponse.SerializeToString,
            )
        stub: pb_grpc.CentralBankStub = await loopback(handlers)
        return stub

    return start


def bank_signed(net: Network, amount: int) -> Envelope:
    """An ICBC/KBANK dual PvP signed by both banks, not endorsed: what ICBC hands its node."""
    endorsed = dual_pvp(net, "ICBC", "KBANK", amount, amount * 5, instruction_id=f"dual-{amount}")
    envelope = Envelope.of(endorsed.body)
    for party in ("ICBC", "KBANK"):
        envelope = sign_as_party(envelope, party, net.keys[party])
    return envelope


def legs(net: Network, *amounts: int) -> list[tuple[Envelope, str]]:
    return [(bank_signed(net, amount), "ICBC") for amount in amounts]


def endorser(stub: Any, net: Network, **options: Any) -> PeerEndorser:
    return PeerEndorser(stub, "PBOC", net.keys["PBOC"], **{"timeout": 5.0, **options})


def assert_endorsed(result: Any) -> None:
    assert not isinstance(result, Refused), result
    ours, theirs = result
    assert (ours.signer, ours.endorses) == ("PBOC", "ICBC")
    assert (theirs.signer, theirs.endorses) == ("BOT", "KBANK")


def assert_not_decided(result: Any) -> None:
    assert isinstance(result, Refused), result
    assert result.reason is Reason.UNAVAILABLE
    assert result.reason.retryable


async def test_a_group_of_legs_goes_in_one_request_and_each_gets_its_own_answer(
    serve: Serve,
) -> None:
    """`endorse_many`: one request on the stream for the group; both endorsements of each
    leg, or the peer's refusal of it, in order."""
    net = network()
    peer = StandInPeer(net)
    peer.refuse = 200
    results = await endorser(await serve(peer), net).endorse_many(legs(net, 100, 200, 300))
    assert peer.requests == [["dual-100", "dual-200", "dual-300"]]
    assert peer.unary_calls == []
    assert isinstance(results[1], Refused)
    assert results[1].reason is Reason.INSUFFICIENT_FUNDS
    assert_endorsed(results[0])
    assert_endorsed(results[2])


async def test_groups_waiting_together_share_a_request_and_the_stream_stays_open(
    serve: Serve,
) -> None:
    """Two groups handed over before the endorser sends share one request; a later group goes
    on the same stream; each group hears its own answers."""
    net = network()
    peer = StandInPeer(net)
    stub = await serve(peer)
    endorsing = endorser(stub, net, in_flight=1)
    first, second = await asyncio.gather(
        endorsing.endorse_many(legs(net, 1, 2)), endorsing.endorse_many(legs(net, 3))
    )
    third = await endorsing.endorse_many(legs(net, 4))
    assert peer.requests == [["dual-1", "dual-2", "dual-3"], ["dual-4"]]
    assert peer.streams == 1
    for result in (*first, *second, *third):
        assert_endorsed(result)


async def test_answers_out_of_order_are_matched_by_correlation_id(serve: Serve) -> None:
    """Two requests outstanding answered in reverse order: each leg gets the answer to its
    own request (the refused one stays refused, the other endorsed)."""
    net = network()
    peer = StandInPeer(net)
    peer.refuse = 11
    endorsing = endorser(await serve(peer), net, max_batch=1, in_flight=2)
    (first,) = await endorsing.endorse_many(legs(net, 10))  # a new stream's first answer
    assert_endorsed(first)
    peer.reorder = 2
    (refused,), (endorsed,) = await asyncio.gather(
        endorsing.endorse_many(legs(net, 11)), endorsing.endorse_many(legs(net, 12))
    )
    assert sorted(peer.requests) == [["dual-10"], ["dual-11"], ["dual-12"]]
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.INSUFFICIENT_FUNDS
    assert_endorsed(endorsed)


async def test_a_request_timing_out_ends_its_stream_and_the_next_batch_opens_another(
    serve: Serve,
) -> None:
    """A request the peer never answers: its legs are UNAVAILABLE after `timeout`, a request
    answered meanwhile is endorsed, and the next batch goes on a new stream."""
    net = network()
    peer = StandInPeer(net)
    peer.hold = 21
    endorsing = endorser(await serve(peer), net, timeout=1.0, max_batch=1, in_flight=2)
    (first,) = await endorsing.endorse_many(legs(net, 20))  # a new stream's first answer
    assert_endorsed(first)
    (held,), (endorsed,) = await asyncio.gather(
        endorsing.endorse_many(legs(net, 21)), endorsing.endorse_many(legs(net, 22))
    )
    assert_not_decided(held)
    assert_endorsed(endorsed)
    (later,) = await endorsing.endorse_many(legs(net, 23))
    assert_endorsed(later)
    assert peer.streams == 2


async def test_a_broken_stream_answers_not_decided_and_the_next_batch_reopens_it(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream breaks with a request outstanding: its legs are UNAVAILABLE (retryable);
    the next batch opens a new stream and is endorsed; the break is logged once, then the
    recovery."""
    caplog.set_level(logging.INFO, logger="participants.peer_endorser")
    net = network()
    peer = StandInPeer(net)
    peer.break_first = True
    endorsing = endorser(await serve(peer), net)
    failed = await endorsing.endorse_many(legs(net, 31, 32))
    assert len(failed) == 2
    for result in failed:
        assert_not_decided(result)
    (endorsed,) = await endorsing.endorse_many(legs(net, 33))
    assert_endorsed(endorsed)
    assert peer.streams == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "participants.peer_endorser"]
    assert len([m for m in messages if "failing" in m]) == 1, messages
    assert len([m for m in messages if "recovered" in m]) == 1, messages


async def test_a_peer_without_the_stream_is_asked_with_the_unary_call(serve: Serve) -> None:
    """A peer answering UNIMPLEMENTED for EndorseStream: the same group is endorsed through
    EndorseDualPvps, and so is the next, without trying the stream again."""
    net = network()
    peer = StandInPeer(net)
    peer.refuse = 42
    endorsing = endorser(await serve(peer, stream=False), net)
    endorsed, refused = await endorsing.endorse_many(legs(net, 41, 42))
    assert_endorsed(endorsed)
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.INSUFFICIENT_FUNDS
    (later,) = await endorsing.endorse_many(legs(net, 43))
    assert_endorsed(later)
    assert peer.unary_calls == [["dual-41", "dual-42"], ["dual-43"]]


async def test_a_peer_answering_out_of_shape_endorses_nothing(serve: Serve) -> None:
    """An answer with one result too few: no leg of the request is endorsed (UNAVAILABLE)."""
    net = network()
    peer = StandInPeer(net)
    peer.short = True
    for result in await endorser(await serve(peer), net).endorse_many(legs(net, 51, 52)):
        assert_not_decided(result)


async def test_a_peer_down_leaves_every_leg_of_the_group_not_decided() -> None:
    """No server at the peer's address: each leg of the group is UNAVAILABLE (retryable)."""
    net = network()
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # nothing listens on port 1
    try:
        results = await endorser(pb_grpc.CentralBankStub(channel), net).endorse_many(
            legs(net, 61, 62)
        )
    finally:
        await channel.close()
    for result in results:
        assert_not_decided(result)


class FaultyStub:
    """The stand-in's stub, whose first EndorseStream call fails with an error of this node's
    own (not a gRPC error)."""

    def __init__(self, stub: pb_grpc.CentralBankStub) -> None:
        self.stub = stub
        self.EndorseDualPvps = stub.EndorseDualPvps
        self.opened = 0

    def EndorseStream(self) -> Any:  # noqa: N802  # the stub's name
        self.opened += 1
        if self.opened == 1:
            raise RuntimeError("a fault of the node")
        return self.stub.EndorseStream()


async def test_an_unexpected_fault_answers_the_group_not_decided_and_the_next_goes_on(
    serve: Serve,
) -> None:
    """A request that fails unexpectedly leaves each leg of its group UNAVAILABLE (nothing
    was submitted) instead of waiting forever; the next group is endorsed."""
    net = network()
    endorsing = endorser(FaultyStub(await serve(StandInPeer(net))), net)
    (failed,) = await endorsing.endorse_many(legs(net, 7))
    assert_not_decided(failed)
    (result,) = await asyncio.wait_for(endorsing.endorse_many(legs(net, 8)), 5)
    assert_endorsed(result)


async def test_an_endorser_told_not_to_stream_uses_the_unary_call_only(serve: Serve) -> None:
    """`stream=False`: the group goes in one EndorseDualPvps call; no stream is opened."""
    net = network()
    peer = StandInPeer(net)
    (result,) = await endorser(await serve(peer), net, stream=False).endorse_many(legs(net, 71))
    assert_endorsed(result)
    assert peer.unary_calls == [["dual-71"]]
    assert peer.streams == 0


async def test_a_stream_that_stops_answering_is_replaced_after_a_timeout(serve: Serve) -> None:
    """A stream kept open whose requests are never answered: the request times out
    UNAVAILABLE, and the next batch goes on a new stream and is endorsed."""
    net = network()
    peer = StandInPeer(net)
    peer.wedge_first = True
    endorsing = endorser(await serve(peer), net, timeout=1.0)
    (timed_out,) = await endorsing.endorse_many(legs(net, 81))
    assert_not_decided(timed_out)
    (endorsed,) = await asyncio.wait_for(endorsing.endorse_many(legs(net, 82)), 30)
    assert_endorsed(endorsed)
    assert peer.streams == 2


async def test_a_stream_ended_with_a_reason_not_about_the_caller_answers_not_decided(
    serve: Serve,
) -> None:
    """A stream the peer ends with a reason (MALFORMED) is the call's fate, not the legs':
    UNAVAILABLE; a refusal of this node as the caller (CALLER_NOT_ALLOWED) stands as given."""
    net = network()
    peer = StandInPeer(net)
    peer.abort_with = Refused(Reason.MALFORMED, "an unreadable correlation id")
    (malformed,) = await endorser(await serve(peer), net).endorse_many(legs(net, 91))
    assert_not_decided(malformed)
    peer.abort_with = Refused(Reason.CALLER_NOT_ALLOWED, "not a peer of this node")
    (refused,) = await endorser(await serve(peer), net).endorse_many(legs(net, 92))
    assert isinstance(refused, Refused)
    assert refused.reason is Reason.CALLER_NOT_ALLOWED


async def test_answers_with_an_unknown_or_a_repeated_correlation_id_are_ignored(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer with an id never asked, and a second answer to a request: both dropped, and
    logged once for the stream (a faulty peer does not flood the log); each leg keeps the
    first answer to its own request."""
    net = network()
    peer = StandInPeer(net)
    peer.duplicate = True
    endorsing = endorser(await serve(peer), net, max_batch=1, in_flight=2)
    with caplog.at_level(logging.WARNING, logger="participants.peer_endorser"):
        groups = await asyncio.gather(*(endorsing.endorse_many(legs(net, n)) for n in (93, 94, 95)))
    for (result,) in groups:
        assert_endorsed(result)
    assert peer.streams == 1
    strays = [r for r in caplog.records if "never asked on this stream" in r.getMessage()]
    assert len(strays) == 1
    assert getattr(strays[0], "correlation_id", None) == 10**9  # the first stray answer


async def test_the_late_answer_to_a_request_whose_caller_left_is_not_taken_for_a_stray(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A request whose sender is cancelled while it waits (the node shutting down) leaves its
    id behind; its answer, when it comes, is dropped without a warning."""
    net = network()
    peer = StandInPeer(net)
    peer.delay = 0.3
    endorsing = endorser(await serve(peer), net, max_batch=1, in_flight=1)
    with caplog.at_level(logging.WARNING, logger="participants.peer_endorser"):
        first = asyncio.create_task(endorsing.endorse_many(legs(net, 96)))
        while not peer.requests:  # the request is on the stream
            await asyncio.sleep(0.01)
        senders = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_send"]
        assert len(senders) == 1
        senders[0].cancel()
        (cancelled,) = await first
        assert_not_decided(cancelled)
        peer.delay = 0.0
        (later,) = await endorsing.endorse_many(legs(net, 97))  # after the late answer
    assert_endorsed(later)
    assert peer.streams == 1
    assert not [r for r in caplog.records if "never asked on this stream" in r.getMessage()]


async def test_unimplemented_with_two_requests_in_flight_falls_back_to_the_unary_call(
    serve: Serve,
) -> None:
    """A peer without the stream and two requests in flight on a new endorser: both are
    endorsed through EndorseDualPvps, none answered UNAVAILABLE."""
    net = network()
    for attempt in range(10):
        peer = StandInPeer(net)
        endorsing = endorser(await serve(peer, stream=False), net, max_batch=1, in_flight=2)
        groups = await asyncio.gather(
            endorsing.endorse_many(legs(net, 100 + attempt)),
            endorsing.endorse_many(legs(net, 200 + attempt)),
        )
        for (result,) in groups:
            assert_endorsed(result)
        assert sorted(peer.unary_calls) == [[f"dual-{100 + attempt}"], [f"dual-{200 + attempt}"]]


class Holding:
    """A peer whose stream answers its first request (with no results) and then reads no
    more, so that later writes are held by flow control; after `release` it sends an answer
    that does not decode when `garble`. Raw bytes both ways."""

    def __init__(self, *, garble: bool = False) -> None:
        self.garble = garble
        self.release = asyncio.Event()
        self.streams = 0

    async def EndorseStream(  # noqa: N802  # the RPC's name
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        self.streams += 1
        first = pb.EndorseStreamRequest.FromString(await anext(requests))
        yield pb.EndorseStreamResponse(correlation_id=first.correlation_id).SerializeToString()
        await self.release.wait()
        if self.garble:
            yield b"\xff\xff\xff"
        await asyncio.Event().wait()  # never reads again


@pytest.fixture
def serve_holding(loopback: Callable[[dict[str, Any]], Any]) -> Callable[[Holding], Any]:
    """Start a loopback server for a `Holding` peer; returns a stub on a channel to it."""

    async def start(peer: Holding) -> pb_grpc.CentralBankStub:
        stub: pb_grpc.CentralBankStub = await loopback(
            {"EndorseStream": grpc.stream_stream_rpc_method_handler(peer.EndorseStream)}
        )
        return stub

    return start


async def callers_with_a_held_write(
    endorsing: PeerEndorser, net: Network
) -> list[asyncio.Task[list[Any]]]:
    """Enough large groups that, once the first is answered, a write to the peer is held."""
    (first,) = await endorsing.endorse_many(legs(net, 1))  # the stream's first answer
    assert_not_decided(first)  # answered without results
    many = [(bank_signed(net, 100), "ICBC")] * 1000
    callers = [asyncio.create_task(endorsing.endorse_many(many)) for _ in range(16)]
    async with asyncio.timeout(30):
        while not endorsing._writing.locked():  # a write is held
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert endorsing._writing.locked()
    return callers


async def test_close_during_a_held_write_answers_every_caller_and_is_final(
    serve_holding: Callable[[Holding], Any],
) -> None:
    """`close()` while a write is held by a peer that stopped reading: every caller is
    answered UNAVAILABLE, and a later request too, without opening a stream."""
    net = network()
    peer = Holding()
    endorsing = endorser(await serve_holding(peer), net, timeout=60.0, max_batch=1000, in_flight=16)
    callers = await callers_with_a_held_write(endorsing, net)
    await endorsing.close()
    done, waiting = await asyncio.wait(callers, timeout=20)
    assert not waiting, f"{len(waiting)} callers still wait after close()"
    for task in done:
        for result in task.result():
            assert_not_decided(result)
    (later,) = await asyncio.wait_for(endorsing.endorse_many(legs(net, 2)), 5)
    assert_not_decided(later)
    assert "stopping" in later.message
    assert peer.streams == 1


async def test_an_answer_that_does_not_decode_during_a_held_write_answers_every_caller(
    serve_holding: Callable[[Holding], Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An answer that does not decode while a write is held: the stream ends and every caller
    is answered UNAVAILABLE within the timeout, with no traceback per request."""
    net = network()
    peer = Holding(garble=True)
    endorsing = endorser(await serve_holding(peer), net, timeout=8.0, max_batch=1000, in_flight=16)
    callers = await callers_with_a_held_write(endorsing, net)
    peer.release.set()
    done, waiting = await asyncio.wait(callers, timeout=20)
    assert not waiting, f"{len(waiting)} callers still wait past the 8 s timeout"
    for task in done:
        for result in task.result():
            assert_not_decided(result)
    tracebacks = [
        r for r in caplog.records if r.name == "participants.peer_endorser" and r.exc_info
    ]
    assert not tracebacks
