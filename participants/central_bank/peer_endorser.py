"""Asking another central bank's node to endorse its bank's leg of dual PvPs, in batches.

A dual-signed PvP between banks of two central banks needs both central banks' endorsements.
The proposer's node asks the counterparty's node for its endorsement; under load one unary
call per PvP costs both nodes more than the signature checks themselves. `PeerEndorser`
queues the requests for one peer and sends whatever is waiting as one `EndorseDualPvps`
call (at most `max_batch`, at most `in_flight` calls at a time), so the per-call cost is
shared by every PvP of the batch while a lone PvP still goes out at once. The proposer's node
endorses its own banks' legs of the call's PvPs there, with one signature over their Merkle
root (the peer checks that endorsement, once per call, before it endorses its side, also with
one signature for the call).
"""

from __future__ import annotations

import asyncio

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge.crypto import Signer
from bridge.domain import Envelope, ParticipantId, Signature
from bridge.errors import Reason, Refused
from bridge.signing import endorse_legs
from bridge.status import refusal_from_rpc_error

__all__ = ["PeerEndorser"]

# a PvP, the party whose leg this node endorses, and who waits for (ours, theirs)
_Waiting = tuple[Envelope, ParticipantId, "asyncio.Future[tuple[Signature, Signature]]"]


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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Signature, Signature]] = loop.create_future()
        self._waiting.append((envelope, party, future))
        if self._senders < self.in_flight:
            self._senders += 1
            asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                await self._call(batch)
        finally:
            self._senders -= 1

    async def _call(self, waiting: list[_Waiting]) -> None:
        batch = [item for item in waiting if not item[2].done()]
        if not batch:
            return
        ours = endorse_legs(
            [(envelope, party) for envelope, party, _ in batch], self.central_bank, self.key
        )
        request = pb.EndorseDualPvpsRequest(
            instructions=[
                wire.envelope_to_proto(envelope.with_signature(endorsement))
                for (envelope, _, _), endorsement in zip(batch, ours, strict=True)
            ]
        )
        try:
            response = await self.stub.EndorseDualPvps(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            refusal = _peer_failure(error)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(refusal)
            return
        results: list[pb.EndorsementResult | None] = list(response.results)
        if len(results) != len(batch):
            results = [None] * len(batch)  # a peer that answers out of shape endorses nothing
        for (_, _, future), endorsement, result in zip(batch, ours, results, strict=True):
            if future.done():
                continue
            if result is not None and result.WhichOneof("result") == "endorsement":
                try:
                    future.set_result((endorsement, wire.signature_from_proto(result.endorsement)))
                except Refused as refusal:
                    future.set_exception(refusal)
            elif result is not None and result.WhichOneof("result") == "refusal":
                future.set_exception(wire.refusal_from_proto(result.refusal))
            else:
                future.set_exception(
                    Refused(
                        Reason.UNAVAILABLE,
                        "the peer node answered without a result; nothing was submitted, "
                        "resubmit the same instruction id",
                    )
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
