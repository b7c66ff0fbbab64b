"""Asking a peer central bank's node for endorsements: a group of legs goes in one call.

The peer is a stand-in for the `EndorseDualPvps` stub: it endorses its bank's leg of each PvP
with its own key (one signature over the call's legs), refuses the ones a test names, or fails
in transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge.domain import Envelope
from bridge.errors import Reason, Refused
from bridge.signing import endorse_legs, sign_as_party
from participants.central_bank.peer_endorser import PeerEndorser
from tests.factories import Network, dual_pvp, network


class PeerStub:
    """Endorses KBANK's leg of every PvP it is asked about, except those with `refuse` as
    their amount; `down`: every call fails in transport."""

    def __init__(self, net: Network, refuse: int = 0, *, down: bool = False) -> None:
        self.net = net
        self.refuse = refuse
        self.down = down
        self.calls: list[list[str]] = []

    async def EndorseDualPvps(  # noqa: N802  # the stub's name
        self, request: pb.EndorseDualPvpsRequest, timeout: float
    ) -> pb.EndorseDualPvpsResponse:
        envelopes = [wire.envelope_from_proto(m) for m in request.instructions]
        self.calls.append([e.body.instruction_id for e in envelopes])
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, None, None, "connection refused"
            )
        wanted = [e for e in envelopes if e.body.pay_amount != self.refuse]  # type: ignore[attr-defined]
        ours = iter(endorse_legs([(e, "KBANK") for e in wanted], "BOT", self.net.keys["BOT"]))
        results = []
        for envelope in envelopes:
            if envelope.body.pay_amount == self.refuse:  # type: ignore[attr-defined]
                refusal = Refused(Reason.INSUFFICIENT_FUNDS, "no funds")
                results.append(pb.EndorsementResult(refusal=wire.refusal_to_proto(refusal)))
            else:
                signature = wire.signature_to_proto(next(ours))
                results.append(pb.EndorsementResult(endorsement=signature))
        return pb.EndorseDualPvpsResponse(results=results)


def bank_signed(net: Network, amount: int) -> Envelope:
    """An ICBC/KBANK dual PvP signed by both banks, not endorsed: what ICBC hands its node."""
    endorsed = dual_pvp(net, "ICBC", "KBANK", amount, amount * 5, instruction_id=f"dual-{amount}")
    envelope = Envelope.of(endorsed.body)
    for party in ("ICBC", "KBANK"):
        envelope = sign_as_party(envelope, party, net.keys[party])
    return envelope


def endorser(stub: PeerStub) -> PeerEndorser:
    return PeerEndorser(stub, "PBOC", stub.net.keys["PBOC"], timeout=5.0)  # type: ignore[arg-type]


async def test_a_group_of_legs_goes_in_one_call_and_each_gets_its_own_answer() -> None:
    """`endorse_many`: one EndorseDualPvps call for the group; both endorsements of each leg,
    or the peer's refusal of it, in order."""
    net = network()
    stub = PeerStub(net, refuse=200)
    legs = [(bank_signed(net, amount), "ICBC") for amount in (100, 200, 300)]
    results = await endorser(stub).endorse_many(legs)
    assert stub.calls == [["dual-100", "dual-200", "dual-300"]]
    assert isinstance(results[1], Refused)
    assert results[1].reason is Reason.INSUFFICIENT_FUNDS
    for result in (results[0], results[2]):
        assert not isinstance(result, Refused)
        ours, theirs = result
        assert (ours.signer, ours.endorses) == ("PBOC", "ICBC")
        assert (theirs.signer, theirs.endorses) == ("BOT", "KBANK")


async def test_groups_waiting_together_share_a_call() -> None:
    """Two groups handed over before the endorser sends share one call (at most `in_flight`
    calls at a time); each group hears its own answers."""
    net = network()
    stub = PeerStub(net)
    peer = PeerEndorser(stub, "PBOC", net.keys["PBOC"], timeout=5.0, in_flight=1)  # type: ignore[arg-type]
    first, second = await asyncio.gather(
        peer.endorse_many([(bank_signed(net, amount), "ICBC") for amount in (1, 2)]),
        peer.endorse_many([(bank_signed(net, 3), "ICBC")]),
    )
    assert stub.calls == [["dual-1", "dual-2", "dual-3"]]
    assert len(first) == 2
    assert len(second) == 1
    assert not any(isinstance(r, Refused) for r in (*first, *second))


async def test_a_peer_down_leaves_every_leg_of_the_group_not_decided() -> None:
    """A call failing in transport: each leg of the group is UNAVAILABLE (retryable)."""
    net = network()
    stub = PeerStub(net, down=True)
    results: list[Any] = await endorser(stub).endorse_many(
        [(bank_signed(net, amount), "ICBC") for amount in (1, 2)]
    )
    assert [r.reason for r in results] == [Reason.UNAVAILABLE, Reason.UNAVAILABLE]
    assert all(r.reason.retryable for r in results)


class FaultyStub(PeerStub):
    """Fails its first call with an error of this node's own (not a gRPC error)."""

    async def EndorseDualPvps(  # noqa: N802  # the stub's name
        self, request: pb.EndorseDualPvpsRequest, timeout: float
    ) -> pb.EndorseDualPvpsResponse:
        if not self.calls:
            self.calls.append([])
            raise RuntimeError("a fault of the node")
        return await super().EndorseDualPvps(request, timeout)


async def test_an_unexpected_fault_answers_the_group_not_decided_and_the_next_goes_on() -> None:
    """A call that fails unexpectedly leaves each leg of its group UNAVAILABLE (nothing was
    submitted) instead of waiting forever; the next group is endorsed."""
    net = network()
    peer = endorser(FaultyStub(net))
    failed: list[Any] = await peer.endorse_many([(bank_signed(net, 7), "ICBC")])
    assert [r.reason for r in failed] == [Reason.UNAVAILABLE]
    (result,) = await asyncio.wait_for(peer.endorse_many([(bank_signed(net, 8), "ICBC")]), 5)
    assert not isinstance(result, Refused)
