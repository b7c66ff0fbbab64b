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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge.crypto import Signer
from bridge.domain import Envelope, ParticipantId, Signature
from bridge.errors import Reason, Refused
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


class PeerEndorser:
    """Batches endorsement requests to one peer central bank node."""

    def __init__(
        self,
        stub: pb_grpc.CentralBankStub,
        central_bank: ParticipantId,
        key: Signer,
        *,
        timeout: float,
        max_batch: int = 256,
        in_flight: int = 2,
    ) -> None:
        self.stub = stub
        self.central_bank = central_bank
        self.key = key
        self.timeout = timeout
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._waiting: list[_Waiting] = []
        self._senders = 0

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
                except Exception:  # a fault of this node: those legs are not endorsed
                    log.exception("an endorsement batch failed unexpectedly")
                    failed = Refused(
                        Reason.UNAVAILABLE,
                        "the node failed while asking for the counterparty's endorsement; "
                        "nothing was submitted, resubmit the same instruction id",
                    )
                    for _, _, answers, index in batch:
                        answers.answer(index, failed)
        finally:
            self._senders -= 1

    async def _call(self, waiting: list[_Waiting]) -> None:
        batch = [item for item in waiting if item[2].waits(item[3])]
        if not batch:
            return
        ours = endorse_legs(
            [(envelope, party) for envelope, party, _, _ in batch], self.central_bank, self.key
        )
        request = pb.EndorseDualPvpsRequest(
            instructions=[
                wire.envelope_to_proto(envelope.with_signature(endorsement))
                for (envelope, _, _, _), endorsement in zip(batch, ours, strict=True)
            ]
        )
        try:
            response = await self.stub.EndorseDualPvps(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            refusal = _peer_failure(error)
            for _, _, answers, index in batch:
                answers.answer(index, refusal)
            return
        results: list[pb.EndorsementResult | None] = list(response.results)
        if len(results) != len(batch):
            results = [None] * len(batch)  # a peer that answers out of shape endorses nothing
        for (_, _, answers, index), endorsement, result in zip(batch, ours, results, strict=True):
            answers.answer(index, _endorsed(endorsement, result))


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
    return Refused(
        Reason.UNAVAILABLE,
        "the peer node answered without a result; nothing was submitted, "
        "resubmit the same instruction id",
    )


def _peer_failure(error: grpc.aio.AioRpcError) -> Refused:
    """What a bank hears when the peer node's EndorseDualPvps call failed as a whole.

    A refusal with a reason (ErrorInfo) stands as the peer gave it. Anything else failed in
    transport (peer down, stalled past the deadline, cancelled): an endorsement changes nothing
    and nothing went to the bridge, so it is UNAVAILABLE (not decided: resubmit the same id),
    never a final refusal such as INSTRUCTION_EXPIRED."""
    if _has_reason(error):
        return refusal_from_rpc_error(error)
    return Refused(
        Reason.UNAVAILABLE,
        f"the counterparty's central bank node did not endorse ({error.code().name}: "
        f"{error.details() or ''}); nothing was submitted, resubmit the same instruction id",
    )


def _has_reason(error: grpc.aio.AioRpcError) -> bool:
    return any(key == "grpc-status-details-bin" for key, _ in error.trailing_metadata() or ())
