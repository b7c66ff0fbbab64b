"""The `BridgeLedger` gRPC service: what central bank nodes call on the shared bridge.

Writes go through the sequencer (group commit; a receipt is sent only once its block is on
disk). Reads come from a second SQLite connection, so they only ever see committed state.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import preview
from bridge.core.ledger import Ledger
from bridge.crypto import FastVerifier
from bridge.domain import Envelope, ExpirePvp, Genesis
from bridge.errors import Reason, Refused
from bridge.log.blocks import Attestation, SealedBlock, attestation_valid
from bridge.metrics import stage
from bridge.node.feed import ChainFeed
from bridge.node.leadership import Standby
from bridge.node.sequencer import Sequencer
from bridge.node.shedding import call_deadline
from bridge.settlement import Result
from bridge.status import abort
from bridge.store.base import Store

_T = TypeVar("_T")
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type information)
PAGE = 500
SEALED_KEPT = 256  # newest blocks kept in memory for the block streams
REPLY = stage("reply")  # a Submit stream's answer to one instruction
ANSWERS_PER_MESSAGE = 1024  # Submit answers sent together in one message at most
FANOUT = stage("fanout")  # a block built for the block streams from memory
READ = stage("read", thread_cpu=True)  # blocks and entries read from the store (reader thread)
ATTESTATION = stage("attestation")  # checking and counting a central bank's attestation


class BridgeLedgerService(pb_grpc.BridgeLedgerServicer):
    def __init__(
        self,
        *,
        genesis: Genesis,
        sequencer: Sequencer | Standby,
        reader: Store,
        feed: ChainFeed,
        ledger: Ledger | None,
        bulk_reader: Store | None = None,
    ) -> None:
        self.genesis = genesis
        self.sequencer = sequencer
        self.reader = reader
        # pages of blocks and entries (GetBlocks reads up to 500 blocks) are read on a thread
        # of their own, through a store handle of their own, never on the event loop that
        # drives settlement; `bulk_reader` defaults to `reader` when that one is thread-safe
        self.bulk_reader = reader if bulk_reader is None else bulk_reader
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-reader")
        self.feed = feed
        self.ledger = ledger
        self.verifier = FastVerifier()
        self.central_bank_keys = {cb.id: cb.public_key for cb in genesis.central_banks}
        # the newest blocks, as sealed: every central bank node streams each one right after
        # it is sealed, so it is built once from memory instead of read from SQLite per stream
        self._sealed: OrderedDict[int, types.Block] = OrderedDict()

    # ------------------------------------------------------------------ writes

    async def Submit(
        self, request_iterator: AsyncIterator[pb.SubmitRequest], context: Context
    ) -> AsyncIterator[pb.SubmitResponse]:
        responses: asyncio.Queue[pb.SubmitResponse | None] = asyncio.Queue()
        outstanding = 0
        reading_done = False
        loop = asyncio.get_running_loop()
        queued: set[asyncio.Future[Result | None]] = set()
        batching = False  # answers go several to a message once the caller sent a batch

        def deliver(correlation_id: int, result: Result) -> None:
            nonlocal outstanding
            with REPLY.timed():
                responses.put_nowait(wire.submit_response_to_proto(correlation_id, result))
            outstanding -= 1
            if reading_done and outstanding == 0:
                responses.put_nowait(None)

        def take(request: pb.SubmitRequest, batched: bool) -> None:
            nonlocal outstanding
            outstanding += 1
            try:
                if batched and request.batch:
                    raise Refused(Reason.MALFORMED, "an item of a batch carries no batch")
                envelope = self._admissible(request.instruction)
            except Refused as refusal:
                deliver(request.correlation_id, refusal)
                return
            timeout = request.timeout_ms / 1000
            future = self.sequencer.enqueue(
                envelope, deadline=loop.time() + timeout if timeout else None
            )
            queued.add(future)
            future.add_done_callback(queued.discard)
            future.add_done_callback(_deliver_when_done(deliver, request.correlation_id))

        async def read_requests() -> None:
            nonlocal reading_done, outstanding, batching
            async for request in request_iterator:
                if request.batch:  # each item as if it came alone
                    batching = True  # the caller reads batched answers too
                    if request.HasField("instruction"):
                        outstanding += 1
                        deliver(
                            request.correlation_id,
                            Refused(Reason.MALFORMED, "a batch comes instead of an instruction"),
                        )
                    for item in request.batch:
                        take(item, True)
                else:
                    take(request, False)
            reading_done = True
            if outstanding == 0:
                responses.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            ended = False
            while not ended and (response := await responses.get()) is not None:
                # whatever else was decided meanwhile goes in the same message
                answers = [response]
                while batching and len(answers) < ANSWERS_PER_MESSAGE and not responses.empty():
                    more = responses.get_nowait()
                    if more is None:
                        ended = True
                        break
                    answers.append(more)
                yield answers[0] if len(answers) == 1 else pb.SubmitResponse(batch=answers)
            await reader
        finally:
            reader.cancel()
            for future in list(queued):  # the stream is gone: what is not sequenced is dropped
                future.cancel()

    async def SubmitOne(self, request: types.SignedInstruction, context: Context) -> types.Receipt:
        try:
            envelope = self._admissible(request)
        except Refused as refusal:
            await abort(context, refusal)
        result = await self.sequencer.submit(envelope, deadline=call_deadline())
        if isinstance(result, Refused):
            await abort(context, result)
        return wire.receipt_to_proto(result)

    def _admissible(self, message: types.SignedInstruction) -> Envelope:
        envelope = wire.envelope_from_proto(message)
        if isinstance(envelope.body, ExpirePvp):
            raise Refused(Reason.NOT_A_PARTY, "PvP expiry is decided by the bridge's clock only")
        return envelope

    async def SubmitAttestation(
        self, request: types.Attestation, context: Context
    ) -> pb.SubmitAttestationResponse:
        try:
            return await self._attested(request)
        except Refused as refusal:
            await abort(context, refusal)

    async def AttestStream(
        self, requests: AsyncIterator[types.Attestation], context: Context
    ) -> AsyncIterator[pb.AttestStreamResponse]:
        """Each attestation recorded as SubmitAttestation records it, answered in order: one
        message each way instead of a unary call per attestation."""
        async for request in requests:
            try:
                yield pb.AttestStreamResponse(accepted=await self._attested(request))
            except Refused as refusal:
                yield pb.AttestStreamResponse(refusal=wire.refusal_to_proto(refusal))

    async def _attested(self, request: types.Attestation) -> pb.SubmitAttestationResponse:
        """Check and record one attestation; the finality reached, or raises Refused."""
        with ATTESTATION.timed():
            attestation = self._checked_attestation(request)
        try:
            # durable with the next block's commit (one fsync for both), or on its own
            await self.sequencer.store_attestation(attestation)
        except Exception as error:
            raise Refused(Reason.UNAVAILABLE, f"attestation not stored: {error}") from error
        with ATTESTATION.timed(0):
            self.feed.attested(attestation)
        return pb.SubmitAttestationResponse(
            final=attestation.height <= self.feed.final_height,
            final_height=self.feed.final_height,
        )

    def _checked_attestation(self, request: types.Attestation) -> Attestation:
        """The attestation, once its signer, block hash and signature check; raises Refused."""
        attestation = Attestation(
            request.height, request.block_hash, request.central_bank, request.signature
        )
        key = self.central_bank_keys.get(attestation.central_bank)
        if key is None:
            raise Refused(
                Reason.UNKNOWN_SIGNER,
                f"{request.central_bank} is not a central bank of this bridge",
            )
        header = self.reader.header(attestation.height)
        if header is None:
            raise Refused(Reason.UNKNOWN_INSTRUCTION, f"no block at height {attestation.height}")
        if header.hash() != attestation.block_hash:
            raise Refused(Reason.MALFORMED, f"block {attestation.height} has a different hash")
        if not attestation_valid(attestation, key, self.verifier):
            raise Refused(
                Reason.BAD_SIGNATURE,
                f"attestation by {attestation.central_bank} does not verify",
            )
        return attestation

    # ------------------------------------------------------------------ blocks

    def block_sealed(self, block: SealedBlock) -> None:
        """Remember a block the sequencer has just committed (as its live streams send it)."""
        header = block.header
        with FANOUT.timed(header.entry_count):
            self._sealed[header.height] = types.Block(
                header=wire.header_to_proto(header),
                entries=[
                    types.SettlementEntry(seq=header.first_seq + i, canonical=data)
                    for i, data in enumerate(block.entry_bytes)
                ],
            )
            while len(self._sealed) > SEALED_KEPT:
                self._sealed.popitem(last=False)

    def close(self) -> None:
        """Finish the reads under way (before the stores close)."""
        self._reads.shutdown(wait=True)

    async def _read(self, read: Callable[..., _T], *args: Any) -> _T:
        """`read(*args)` on the reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reads, read, *args)

    def _stored_blocks(self, first: int, last: int) -> list[types.Block]:
        with READ.timed(last - first + 1):
            return [b for h in range(first, last + 1) if (b := self._stored_block(h)) is not None]

    def _stored_block(self, height: int) -> types.Block | None:
        store = self.bulk_reader
        header = store.header(height)
        if header is None:
            return None
        entries = store.block_entry_bytes(height)
        attestations = store.attestations(height)
        return types.Block(
            header=wire.header_to_proto(header),
            entries=[
                types.SettlementEntry(seq=header.first_seq + i, canonical=data)
                for i, data in enumerate(entries)
            ],
            attestations=[wire.attestation_to_proto(a) for a in attestations],
            final=height <= self.feed.final_height,
        )

    async def GetBlocks(
        self, request: pb.GetBlocksRequest, context: Context
    ) -> pb.GetBlocksResponse:
        first = max(1, request.from_height)
        last = min(request.to_height or self.feed.height, self.feed.height, first + PAGE - 1)
        return pb.GetBlocksResponse(blocks=await self._read(self._stored_blocks, first, last))

    async def StreamBlocks(
        self, request: pb.StreamBlocksRequest, context: Context
    ) -> AsyncIterator[types.Block]:
        height = max(1, request.from_height)
        while True:
            if height > self.feed.height:
                await self.feed.wait_height_above(height - 1)
                continue
            # a stream following the head gets the block as sealed, from memory, without the
            # attestations gathered since (it would mostly have none yet anyway)
            block = self._sealed.get(height) if height > self.feed.final_height else None
            if block is None:
                stored = await self._read(self._stored_blocks, height, height)
                block = stored[0] if stored else None
            if block is None:  # sealed in memory, not yet readable: wait briefly
                await asyncio.sleep(0.005)
                continue
            yield block
            height += 1

    async def WatchEntries(
        self, request: pb.WatchEntriesRequest, context: Context
    ) -> AsyncIterator[types.EntryEvent]:
        seq = max(1, request.from_seq)
        while True:
            rows = await self._read(self._entries_from, seq)
            if not rows:
                await self.feed.wait_height_above(self.feed.height)
                continue
            for entry_seq, height, data in rows:
                yield types.EntryEvent(
                    entry=wire.entry_bytes_to_proto(entry_seq, data), block_height=height
                )
                seq = entry_seq + 1

    def _entries_from(self, seq: int) -> list[tuple[int, int, bytes]]:
        with READ.timed(0):
            return self.bulk_reader.entries_from(seq, PAGE)

    async def GetFinality(
        self, request: pb.GetFinalityRequest, context: Context
    ) -> pb.GetFinalityResponse:
        attestations = self.reader.covering_attestations(request.height) if request.height else []
        return pb.GetFinalityResponse(
            final_height=self.feed.final_height,
            sealed_height=self.feed.height,
            final=0 < request.height <= self.feed.final_height,
            attestations=[wire.attestation_to_proto(a) for a in attestations],
        )

    # ------------------------------------------------------------------ state

    async def GetBalances(
        self, request: pb.GetBalancesRequest, context: Context
    ) -> types.AccountList:
        return types.AccountList(
            accounts=[
                wire.account_to_proto(*row) for row in self.reader.accounts(request.participant)
            ]
        )

    async def GetParticipant(
        self, request: pb.GetParticipantRequest, context: Context
    ) -> pb.GetParticipantResponse:
        participant = self.reader.participant(request.participant)
        if participant is None:
            await abort(
                context,
                Refused(Reason.UNKNOWN_PARTICIPANT, f"unknown participant {request.participant}"),
            )
        policy = self.reader.policy(participant.home_central_bank)
        currencies = [c for c in self.reader.currencies() if c.issuer == participant.id]
        return pb.GetParticipantResponse(
            participant=wire.participant_to_proto(participant),
            policy=wire.policy_to_proto(policy),
            currencies=[wire.currency_to_proto(c) for c in currencies],
        )

    async def ListParticipants(
        self, request: pb.ListParticipantsRequest, context: Context
    ) -> types.ParticipantList:
        participants = [
            p
            for p in self.reader.participants()
            if not request.home_central_bank or p.home_central_bank == request.home_central_bank
        ]
        return types.ParticipantList(
            participants=[wire.participant_to_proto(p) for p in participants]
        )

    async def GetPvp(self, request: pb.GetPvpRequest, context: Context) -> types.PvpStatus:
        state = self.reader.pvp(request.proposer, request.pvp_id)
        if state is None:
            await abort(
                context,
                Refused(
                    Reason.UNKNOWN_PVP,
                    f"no PvP {preview(request.pvp_id)} proposed by {request.proposer}",
                ),
            )
        return wire.pvp_to_proto(state)

    async def GetReceipt(
        self, request: pb.GetReceiptRequest, context: Context
    ) -> types.InstructionStatus:
        found = self.reader.receipt(request.sender, request.instruction_id)
        if found is None:
            await abort(
                context,
                Refused(
                    Reason.UNKNOWN_INSTRUCTION,
                    f"{request.sender} has no settled instruction "
                    f"{preview(request.instruction_id)}",
                ),
            )
        receipt, height = found
        return types.InstructionStatus(
            receipt=wire.receipt_to_proto(receipt),
            block_height=height,
            final=height <= self.feed.final_height,
        )

    async def GetCurrencySupply(
        self, request: types.CurrencySupplyRequest, context: Context
    ) -> types.CurrencySupply:
        supply = self.reader.supply(request.currency)
        if supply is None:
            await abort(
                context,
                Refused(Reason.UNKNOWN_CURRENCY, f"unknown currency {request.currency}"),
            )
        issued, redeemed = supply
        return types.CurrencySupply(
            currency=request.currency,
            issued=issued,
            redeemed=redeemed,
            outstanding=issued - redeemed,
        )

    async def GetGenesis(self, request: pb.GetGenesisRequest, context: Context) -> types.Genesis:
        return wire.genesis_to_proto(self.genesis)


def _deliver_when_done(
    deliver: Callable[[int, Result], None], correlation_id: int
) -> Callable[[asyncio.Future[Result | None]], None]:
    def done(future: asyncio.Future[Result | None]) -> None:
        if future.cancelled():  # dropped with its stream: nobody to answer
            return
        result = future.result()
        assert result is not None
        deliver(correlation_id, result)

    return done
