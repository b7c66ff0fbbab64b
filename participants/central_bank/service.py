"""The central bank node's gRPC services.

`CentralBank` is what its commercial banks call: every instruction must carry the bank's own
valid signature, every query a signed `auth`; the node endorses only its own banks' legs and
forwards to the bridge. Its `EndorseDualPvp(s)` and `EndorseStream` are for peer central bank
nodes alone (authenticated as the bridge authenticates them, `bridge.node.caller_auth`).
`CentralBankAdmin` is the central bank's own desk, on a listener of its own (bearer token): it
signs admissions, policy, issuance and freezes with the central bank's key. The bridge enforces
who may do what deterministically; the node refuses early what it can see is not allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import HISTORY_DEFAULT, HISTORY_PAGE, preview
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    DualPvp,
    Envelope,
    FreezeAccount,
    Instruction,
    Issue,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
    endorsement_message,
    party_message,
)
from bridge.errors import Reason, Refused
from bridge.node.caller_auth import CallerAuthenticator
from bridge.node.request_guard import PartlyRefused
from bridge.settlement import Result
from bridge.signing import endorse, endorse_legs, signed
from bridge.status import abort, refusal_from_rpc_error
from participants.auth import check_query
from participants.central_bank.bridge_link import BridgeLink, Submission
from participants.central_bank.peer_endorser import Endorsed, PeerEndorser
from participants.central_bank.refusals import (
    NodeRefusals,
    RecordedRefusal,
    edge_refusal,
    instruction_refusal,
    issuance_refusal,
)
from participants.central_bank.replica import Replica
from participants.network_config import NetworkConfig

log = logging.getLogger("participants.central_bank")
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type information)
BRIDGE_DEADLINE = 10.0
REPLICA_WAIT = 2.0  # seconds a query waits for the replica to replay an entry just recorded
BAD_SIGNATURES_REMEMBERED = 1024  # until the refusal they caused is recorded
# instructions in flight per SubmitStream or EndorseStream call (a batch: its items)
STREAM_WINDOW = 4096
# instructions worked on over all the node's SubmitStream calls together: a bank opening many
# streams meets this bound, each stream its window (which also holds its unread answers)
DEFAULT_MAX_STREAM_INSTRUCTIONS = 4 * STREAM_WINDOW
SUBMIT_STREAM = "/bridge.v1.CentralBank/SubmitStream"


# what SubmitStream takes: pvp_dual and the kinds of the single-signature RPCs
STREAM_KINDS: dict[str, type[Instruction]] = {
    kind.KIND: kind for kind in (DualPvp, Pay, ProposePvp, AcceptPvp, RejectPvp, CancelPvp, Redeem)
}
# what became of one bank's instruction: its status, or the exception that stopped it (Refused:
# a refusal, any other: a fault of this node)
Handled = types.InstructionStatus | Exception


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signing_time(requested: int) -> int:
    """When the node signs an instruction it builds: the time the request names, so a retry
    with the same values writes the same body; without one, the node's clock now."""
    return requested if requested > 0 else now_ms()


class NodeStreamLoad:
    """The instructions all of a node's SubmitStream calls are working on together; what would
    pass `bound` is shed at once (OVERLOADED: retryable, nothing was done) rather than queued,
    as the node sheds unary calls past its in-flight bound. An instruction holds its room until
    its work is done, not until its answer is read: a client that stops reading holds only its
    own streams' windows, never the room of every other bank."""

    def __init__(self, bound: int = DEFAULT_MAX_STREAM_INSTRUCTIONS) -> None:
        self.bound = bound
        self.in_flight = 0

    def try_take(self, count: int) -> bool:
        """Take room for `count` instructions if it fits (a batch larger than the bound fits
        when nothing else is in flight, or it would never fit)."""
        if self.in_flight and self.in_flight + count > self.bound:
            return False
        self.in_flight += count
        return True

    def release(self, count: int) -> None:
        self.in_flight -= count

    def give_back(self, count: int, _: asyncio.Task[None]) -> None:
        """`release`, as a done callback of the task that did the work."""
        self.release(count)


class InstructionWindow:
    """How many instructions one stream may have in flight: `take(n)` waits until `n` more fit,
    `release(n)` gives them back. One reader takes, in order; a batch is taken whole."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._room = asyncio.Event()

    async def take(self, count: int) -> None:
        while self.free < min(count, self.size):
            self._room.clear()
            await self._room.wait()
        self.free -= count

    def release(self, count: int) -> None:
        self.free += count
        self._room.set()


# the answer to one stream request, given the items of it refused at the edge; and the answer
# to one shed past the node's bound (the bound given)
Answer = Callable[[Any, dict[int, Refused]], Awaitable[Any]]
Shed = Callable[[Any, dict[int, Refused], int], Any]


async def answered_in_window(
    requests: AsyncIterator[Any],
    answer: Answer,
    *,
    load: NodeStreamLoad | None = None,
    shed: Shed | None = None,
) -> AsyncGenerator[Any, None]:
    """The answers to a request stream's messages, each worked on at once and yielded as soon
    as it is done (a message may carry items the request guard refused at the edge:
    `PartlyRefused`). At most STREAM_WINDOW instructions per stream are worked on or wait, as
    answers, for gRPC to take them: an instruction's room is freed only then, so a client that
    sends without reading is held to STREAM_WINDOW instructions of work and of answers. With
    `load`, the node's streams together: a message past its bound is answered at once with
    `shed(request, refused, bound)`, and a message's room there is back once its work is done,
    however it ends (a task cancelled before it ever ran included)."""
    if (load is None) != (shed is None):
        raise ValueError("a node-wide bound needs the answer to what it sheds, and only it")
    responses: asyncio.Queue[tuple[Any, int] | None] = asyncio.Queue()
    window = InstructionWindow(STREAM_WINDOW)
    handlers: set[asyncio.Task[None]] = set()

    async def handle(request: Any, refused: dict[int, Refused], count: int) -> None:
        try:
            response = await answer(request, refused)
        except BaseException:
            window.release(count)
            raise
        responses.put_nowait((response, count))

    async def read_requests() -> None:
        try:
            async for item in requests:
                request: Any = item
                refused: dict[int, Refused] = {}
                if isinstance(item, PartlyRefused):  # some items out of bounds (the edge)
                    request, refused = item.message, item.refused
                # at most STREAM_WINDOW instructions in flight: a batch counts as its items
                count = max(1, len(request.instructions))
                await window.take(count)
                if load is not None and shed is not None and not load.try_take(count):
                    responses.put_nowait((shed(request, refused, load.bound), count))
                    continue
                task = asyncio.create_task(handle(request, refused, count))
                handlers.add(task)
                task.add_done_callback(handlers.discard)
                if load is not None:
                    task.add_done_callback(functools.partial(load.give_back, count))
            while handlers:
                await asyncio.wait(set(handlers))
        finally:
            responses.put_nowait(None)  # the answers end, however the requests did

    reader = asyncio.create_task(read_requests())
    try:
        while (answered := await responses.get()) is not None:
            response, count = answered
            yield response
            window.release(count)  # taken by gRPC: its room is free again
        await reader
    finally:
        reader.cancel()
        for task in handlers:
            task.cancel()


def read_failure(error: grpc.RpcError) -> Refused:
    """What a failed read of the bridge means to the bank: the bridge's refusal as it gave it,
    or, if the call failed in transport, UNAVAILABLE (a read changes nothing, so nothing can
    have happened: never OUTCOME_UNKNOWN, never a final refusal)."""
    refusal = refusal_from_rpc_error(error)
    if refusal.reason is Reason.OUTCOME_UNKNOWN:
        return Refused(Reason.UNAVAILABLE, f"the bridge did not answer: {refusal.message}")
    return refusal


class CentralBankCore:
    """What both services share: identity, keys, the bridge and the replica."""

    def __init__(
        self,
        *,
        config: NetworkConfig,
        central_bank: str,
        key: PrivateKey,
        bridge: bridge_grpc.BridgeLedgerStub,
        link: BridgeLink,
        replica: Replica,
        peers: dict[str, pb_grpc.CentralBankStub],
        refusals: NodeRefusals | None = None,
    ) -> None:
        self.config = config
        self.id = central_bank
        self.currency = config.central_bank(central_bank).currency
        self.key = key
        self.bridge = bridge
        self.link = link
        self.replica = replica
        self.peers = peers
        self.verifier = FastVerifier()
        self.refusals = refusals  # None: refusals decided here are not recorded
        self._endorsers: dict[str, PeerEndorser] = {}
        # (party, body, signature) found not to verify lately: a refusal for a bad signature
        # is recorded as unauthenticated without verifying the same signature again
        self._bad_signatures: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()

    def endorser(self, central_bank: str) -> PeerEndorser | None:
        """Batched endorsement requests to one peer central bank's node (None: no route)."""
        endorser = self._endorsers.get(central_bank)
        if endorser is None:
            peer = self.peers.get(central_bank)
            if peer is None:
                return None
            endorser = self._endorsers[central_bank] = PeerEndorser(
                peer, self.id, self.key, timeout=BRIDGE_DEADLINE, peer=central_bank
            )
        return endorser

    async def close_endorsers(self) -> None:
        """End the endorsement streams open to peer nodes (before their channels close)."""
        for endorser in list(self._endorsers.values()):  # one may be added meanwhile
            await endorser.close()

    def refused(
        self, message: types.SignedInstruction, envelope: Envelope | None, refusal: Refused
    ) -> None:
        """Record an instruction this node refused itself (a final refusal: answers that
        decide nothing, such as UNAVAILABLE, are not refusals)."""
        if self.refusals is not None and not refusal.reason.retryable:
            row = instruction_refusal(message, envelope, refusal, self.replica.ledger, now_ms())
            self.refusals.record(row, authenticated=self.signed_by_sender(envelope))

    def signed_by_sender(self, envelope: Envelope | None) -> bool:
        """Whether the sender the instruction names signed it: its own signature verifies with
        the key the replica holds for it. Only then is a refusal filed as that bank's (anyone
        can name a bank as the sender)."""
        if envelope is None:
            return False
        sender = envelope.body.sender
        signature = envelope.party_signature(sender)
        participant = self.replica.ledger.participants.get(sender)
        if signature is None or participant is None:
            return False
        checked = (sender, envelope.body_bytes, signature.value)
        if checked in self._bad_signatures:  # just found not to verify
            del self._bad_signatures[checked]
            return False
        return self.verifier.verify(
            participant.public_key, party_message(envelope.body_bytes), signature.value
        )

    def refused_at_edge(self, method: str, message: Any, refusal: Refused) -> None:
        """Record a bank's instruction refused at the edge for its shape (`RequestGuard`);
        nothing of it was checked, so its sender is not authenticated."""
        if self.refusals is not None:
            row = edge_refusal(method, message, refusal, now_ms())
            if row is not None:
                self.refusals.record(row)

    def refused_issuance(
        self, request: pb.IssuanceRequest, refusal: Refused, *, authenticated: bool
    ) -> None:
        """Record an issuance request this node refused itself (final refusals only);
        `authenticated`: its signed `auth` verified before the refusal."""
        if self.refusals is not None and not refusal.reason.retryable:
            ledger = self.replica.ledger
            row = issuance_refusal(request, self.id, refusal, ledger, now_ms())
            self.refusals.record(row, authenticated=authenticated)

    # ------------------------------------------------------------------ identities

    async def public_key_of(self, participant: str) -> bytes | None:
        known = self.replica.ledger.participants.get(participant)
        if known is not None:
            return known.public_key
        try:
            response = await self.bridge.GetParticipant(
                bridge_pb.GetParticipantRequest(participant=participant), timeout=BRIDGE_DEADLINE
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise read_failure(error) from error
        key: bytes = response.participant.public_key
        return key

    async def home_of(self, participant: str) -> str | None:
        known = self.replica.ledger.participants.get(participant)
        if known is not None:
            return known.home_central_bank
        try:
            response = await self.bridge.GetParticipant(
                bridge_pb.GetParticipantRequest(participant=participant), timeout=BRIDGE_DEADLINE
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise read_failure(error) from error
        home: str = response.participant.home_central_bank
        return home

    async def own_bank(self, participant: str) -> None:
        home = await self.home_of(participant)
        if home is None:
            raise Refused(Reason.UNKNOWN_SIGNER, f"unknown bank {participant}")
        if home != self.id:
            raise Refused(
                Reason.NOT_HOME_CENTRAL_BANK,
                f"{participant} is a bank of {home}; send its instructions to {home}'s node",
            )

    async def authenticate_query(self, method: str, request: Any) -> str:
        requester: str = request.auth.requester
        key = await self.public_key_of(requester) if requester else None
        bank = check_query(method, request, key, self.verifier, now_ms())
        await self.own_bank(bank)
        return bank

    async def verify_party(self, envelope: Envelope, party: str) -> None:
        signature = envelope.party_signature(party)
        if signature is None:
            raise Refused(Reason.MISSING_SIGNATURE, f"the instruction is not signed by {party}")
        key = await self.public_key_of(party)
        if key is None:
            raise Refused(Reason.UNKNOWN_SIGNER, f"unknown participant {party}")
        if not self.verifier.verify(key, party_message(envelope.body_bytes), signature.value):
            self._bad_signatures[(party, envelope.body_bytes, signature.value)] = None
            if len(self._bad_signatures) > BAD_SIGNATURES_REMEMBERED:
                self._bad_signatures.popitem(last=False)
            raise Refused(Reason.BAD_SIGNATURE, f"signature by {party} does not verify")

    # ------------------------------------------------------------------ forwarding

    async def settle(
        self, envelope: Envelope, endorse: tuple[str, ...] = ()
    ) -> types.InstructionStatus:
        """Forward `envelope` to the bridge, this node endorsing the legs of `endorse` in the
        batch it goes in (one signature per batch); the receipt, or raises Refused."""
        (result,) = await self.settle_many([(envelope, endorse)])
        if isinstance(result, Refused):
            raise result
        return result

    async def settle_many(
        self, submissions: Sequence[Submission]
    ) -> list[types.InstructionStatus | Refused]:
        """`settle` for each `(envelope, endorse)`, handed to the bridge link as one group:
        the receipt or refusal of each, in order."""
        return [status_of(result) for result in await self.link.submit_many(submissions)]

    async def sign_and_settle(
        self, body: Instruction, *, stamped: bool = False
    ) -> types.InstructionStatus:
        """Sign `body` with the central bank's key and settle it; raises Refused.

        `stamped`: the request named no signing time, so the node put its own clock in the
        body. A retry of that request then meets the body recorded under its id with an
        earlier signing time: the same request, answered as the duplicate it is (the recorded
        receipt, `duplicate` set). Any other difference stays ID_CONFLICT."""
        try:
            return await self.settle(signed(body, self.key))
        except Refused as refusal:
            if not stamped or refusal.reason is not Reason.ID_CONFLICT:
                raise
            recorded = await self.recorded_body(body.sender, body.instruction_id)
            if recorded is None:
                raise
            same = replace(body, signed_at=recorded.signed_at)
            if Envelope.of(same).body_hash() != Envelope.of(recorded).body_hash():
                raise
            return await self.settle(signed(recorded, self.key))

    async def recorded_body(self, sender: str, instruction_id: str) -> Instruction | None:
        """The body the bridge recorded under `instruction_id` of `sender` (None: nothing is
        recorded under it); raises Refused (UNAVAILABLE) when the bridge cannot say."""
        try:
            status = await self.bridge.GetReceipt(
                bridge_pb.GetReceiptRequest(sender=sender, instruction_id=instruction_id),
                timeout=BRIDGE_DEADLINE,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise read_failure(error) from error
        seq = status.receipt.seq
        call = self.bridge.WatchEntries(
            bridge_pb.WatchEntriesRequest(from_seq=seq), timeout=BRIDGE_DEADLINE
        )
        try:
            async for event in call:
                entry = wire.entry_from_proto(event.entry)
                return entry.envelope.body if entry.seq == seq else None
        except grpc.aio.AioRpcError as error:
            raise read_failure(error) from error
        finally:
            call.cancel()
        return None


def status_of(result: Result) -> types.InstructionStatus | Refused:
    """The bridge's answer to a forwarded instruction as the bank hears it."""
    if isinstance(result, Refused):
        return result
    return types.InstructionStatus(receipt=wire.receipt_to_proto(result))


def stream_kind(request: types.SignedInstruction) -> type[Instruction]:
    """The kind of a SubmitStream instruction, as its body says; raises Refused (MALFORMED)
    for a kind SubmitStream does not take."""
    kind = request.instruction.WhichOneof("body")
    taken = STREAM_KINDS.get(kind or "")
    if taken is None:
        raise Refused(Reason.MALFORMED, f"SubmitStream does not take {kind!r} instructions")
    return taken


def stream_result(handled: Handled) -> pb.BankSubmitResult:
    """One instruction's result in a SubmitStream answer. A fault of this node, not of the
    instruction, is OUTCOME_UNKNOWN: it may have been sent on already, so the bank resubmits
    the same instruction; the batch's other answers stand."""
    if isinstance(handled, types.InstructionStatus):
        return pb.BankSubmitResult(status=handled)
    if not isinstance(handled, Refused):
        log.error("a SubmitStream instruction failed unexpectedly", exc_info=handled)
        handled = Refused(
            Reason.OUTCOME_UNKNOWN,
            "the central bank node failed while handling this instruction; resubmit it "
            "with the same id",
        )
    return pb.BankSubmitResult(refusal=wire.refusal_to_proto(handled))


@dataclass(frozen=True, slots=True)
class Checked:
    """A bank's instruction that passed this node's checks, and how it goes on to the bridge."""

    request: types.SignedInstruction
    envelope: Envelope
    endorse: tuple[str, ...] = ()  # the legs this node endorses in the batch it forwards
    peer: str | None = None  # the counterparty's central bank, whose node endorses first


def page_limit(limit: int) -> int:
    """A page size asked for (0: the default); raises Refused (BAD_PAGE_SIZE) outside 0-500."""
    if not 0 <= limit <= HISTORY_PAGE:  # also refused at the edge (bridge.bounds)
        raise Refused(
            Reason.BAD_PAGE_SIZE,
            f"limit must be 0 (default {HISTORY_DEFAULT}) to {HISTORY_PAGE}: got {limit}",
        )
    return limit or HISTORY_DEFAULT


async def refusal_page(
    core: CentralBankCore,
    from_id: int,
    limit: int,
    sender: str,
    *,
    authenticated_only: bool = False,
) -> pb.RefusalPage:
    """One page of the refusals this node recorded (none when it records none); only those
    whose sender was authenticated when asked. Raises Refused (UNAVAILABLE) when the file
    cannot be read."""
    if core.refusals is None:
        return pb.RefusalPage()
    rows = await core.refusals.page(
        max(1, from_id), limit + 1, sender, authenticated_only=authenticated_only
    )
    next_id = rows.pop().id if len(rows) > limit else 0
    return pb.RefusalPage(refusals=[refusal_to_proto(r) for r in rows], next_id=next_id)


def refusal_to_proto(row: RecordedRefusal) -> pb.RecordedRefusal:
    return pb.RecordedRefusal(
        id=row.id,
        time=row.time,
        sender=row.sender,
        instruction_id=row.instruction_id,
        kind=row.kind,
        reason=row.reason,
        corridor=row.corridor,
        authenticated=row.authenticated,
    )


class CentralBankService(pb_grpc.CentralBankServicer):
    """Bank-facing RPCs. Every method refuses with a precise status and changes nothing.

    `peers` authenticates the peer central bank nodes that ask for endorsements (None: no
    peer is trusted, every endorsement request is refused).
    """

    def __init__(
        self,
        core: CentralBankCore,
        *,
        peers: CallerAuthenticator | None = None,
        stream_load: NodeStreamLoad | None = None,
    ) -> None:
        self.core = core
        self.peers = peers
        self.stream_load = stream_load or NodeStreamLoad()

    def _peer(self, context: Context, method: str) -> str:
        """The authenticated peer central bank calling `method`; raises Refused."""
        if self.peers is None:
            raise Refused(Reason.CALLER_NOT_AUTHENTICATED, "this node trusts no peer node")
        return self.peers.of_context(context, f"/bridge.v1.CentralBank/{method}")

    async def _bank_instruction(
        self, request: types.SignedInstruction, kind: type[Instruction], context: Context
    ) -> types.InstructionStatus:
        try:
            return await self._single(request, kind)
        except Refused as refusal:
            await abort(context, refusal)

    async def _single(
        self, request: types.SignedInstruction, kind: type[Instruction]
    ) -> types.InstructionStatus:
        """Check, endorse and settle one bank's own instruction; raises Refused (recording
        the refusals decided here; the bridge records its own)."""
        (handled,) = await self._handled([(request, kind)])
        if isinstance(handled, Exception):
            raise handled
        return handled

    async def _handled(
        self, items: Sequence[tuple[types.SignedInstruction, type[Instruction] | None]]
    ) -> list[Handled]:
        """Check, endorse and settle a bank's instructions of the kinds given (None: as its
        body says, of those SubmitStream takes) as one batch, each failing on its own: checked
        in turn (recording the refusals decided here), the legs a peer node endorses sent to
        each peer as one group, and the instructions forwarded to the bridge link as groups.
        What became of each, in order."""
        handled: list[Handled | None] = [None] * len(items)
        checked: dict[int, Checked] = {}
        direct: list[int] = []
        via: dict[str, list[int]] = {}
        for index, (request, kind) in enumerate(items):
            try:
                item = checked[index] = await self._checked(request, kind)
            except Exception as error:
                handled[index] = error
                continue
            if item.peer is None:
                direct.append(index)
            else:
                via.setdefault(item.peer, []).append(index)
        groups = [
            self._endorsed_by(peer, [checked[i] for i in at], at, handled)
            for peer, at in via.items()
        ]
        if direct:
            submissions = [(checked[i].envelope, checked[i].endorse) for i in direct]
            groups.append(self._forwarded(direct, submissions, handled))
        failures: list[BaseException | None] = []
        try:
            if len(groups) == 1:
                await groups[0]
            elif groups:
                failures = await asyncio.gather(*groups, return_exceptions=True)
        except Exception as error:
            failures = [error]
        fault = next((f for f in failures if isinstance(f, Exception)), None)
        for index, result in enumerate(handled):
            if result is None:  # its group failed unexpectedly: it may have been sent on
                handled[index] = fault or RuntimeError("the instruction was not handled")
        return cast(list[Handled], handled)  # every one set: refused, failed or forwarded

    async def _checked(
        self, request: types.SignedInstruction, kind: type[Instruction] | None
    ) -> Checked:
        """One bank's instruction checked as its RPC checks it (`kind` None: as SubmitStream
        takes it, by its body); raises Refused, recording it."""
        core = self.core
        envelope: Envelope | None = None
        try:
            kind = kind or stream_kind(request)
            envelope = wire.envelope_from_proto(request)
            if kind is not DualPvp:
                await self._check_single(envelope, kind)
                checked = Checked(request, envelope, (envelope.body.sender,))
            else:
                body, home = await self._check_dual(envelope)
                if home == core.id:  # both legs ours: endorsed in the batch sent to the bridge
                    checked = Checked(request, envelope, (body.sender, body.counterparty))
                else:
                    checked = Checked(request, envelope, peer=home)
            core.replica.known.remember(envelope)  # its entry's replay takes the decoded body
            return checked
        except Refused as refusal:
            core.refused(request, envelope, refusal)
            raise

    async def _forwarded(
        self, indexes: list[int], submissions: list[Submission], handled: list[Handled | None]
    ) -> None:
        """Forward `submissions` (the instructions at `indexes`) to the bridge as one group;
        set what became of each."""
        if not indexes:
            return
        try:
            results: Sequence[Handled] = await self.core.settle_many(submissions)
        except Exception as error:
            results = [error] * len(indexes)
        for index, result in zip(indexes, results, strict=True):
            handled[index] = result

    async def _endorsed_by(
        self, home: str, items: list[Checked], indexes: list[int], handled: list[Handled | None]
    ) -> None:
        """Have `home`'s node endorse its banks' legs of the dual PvPs `items` (at `indexes`),
        as one group, then forward those it endorsed to the bridge as one group."""
        core = self.core
        endorser = core.endorser(home)
        if endorser is None:  # not decided: UNAVAILABLE is retryable, so it is not recorded
            for index in indexes:
                handled[index] = Refused(Reason.UNAVAILABLE, f"no route to {home}'s node")
            return
        # our legs are endorsed in the batch sent to the peer node, which checks them; a
        # refusal from there is the peer's, recorded by the peer
        try:
            legs = [(item.envelope, item.envelope.body.sender) for item in items]
            endorsed: Sequence[Endorsed | Exception] = await endorser.endorse_many(legs)
        except Exception:
            # a fault of this node before anything went to the bridge: not decided, and
            # known not to have settled
            log.exception("endorsements by %s's node failed unexpectedly", home)
            unsent = Refused(
                Reason.UNAVAILABLE,
                f"{home}'s endorsement could not be had (a fault of this node); nothing was "
                "sent to the bridge: resubmit the same instruction id",
            )
            endorsed = [unsent] * len(items)
        ready: list[int] = []
        submissions: list[Submission] = []
        for index, item, result in zip(indexes, items, endorsed, strict=True):
            try:
                if isinstance(result, Exception):
                    raise result
                submissions.append((self._with_endorsements(item, home, *result), ()))
                ready.append(index)
            except Exception as error:
                handled[index] = error
        await self._forwarded(ready, submissions, handled)

    def _with_endorsements(
        self, item: Checked, home: str, ours: Signature, theirs: Signature
    ) -> Envelope:
        """The dual PvP with both central banks' endorsements; raises Refused (recorded) if
        the peer endorsed another leg than its bank's."""
        counterparty = item.envelope.body.parties()[1]  # a pvp_dual: (sender, counterparty)
        if theirs.signer != home or theirs.endorses != counterparty:
            wrong = Refused(Reason.BAD_SIGNATURE, f"{home} returned an endorsement of another leg")
            self.core.refused(item.request, item.envelope, wrong)
            raise wrong
        return item.envelope.with_signature(ours).with_signature(theirs)

    async def _check_single(self, envelope: Envelope, kind: type[Instruction]) -> None:
        """One bank's own instruction of `kind`, signed by it alone; raises Refused."""
        core = self.core
        if not isinstance(envelope.body, kind):
            raise Refused(
                Reason.MALFORMED,
                f"expected a {kind.KIND} instruction, got {envelope.body.KIND}",
            )
        sender = envelope.body.sender
        await core.own_bank(sender)
        if any(s.endorses for s in envelope.signatures):
            raise Refused(Reason.MALFORMED, "endorsements are added by the central bank nodes")
        if len(envelope.signatures) > 1:
            raise Refused(Reason.MALFORMED, f"{kind.KIND} carries exactly the sender's signature")
        await core.verify_party(envelope, sender)  # none: MISSING_SIGNATURE

    async def Pay(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, Pay, context)

    async def ProposePvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, ProposePvp, context)

    async def AcceptPvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, AcceptPvp, context)

    async def RejectPvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, RejectPvp, context)

    async def CancelPvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, CancelPvp, context)

    async def RequestRedemption(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        return await self._bank_instruction(request, Redeem, context)

    async def SubmitDualPvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        try:
            return await self._dual(request)
        except Refused as refusal:
            await abort(context, refusal)

    async def _dual(self, request: types.SignedInstruction) -> types.InstructionStatus:
        """Check, endorse (both legs) and settle a dual-signed PvP; raises Refused (recording
        the refusals decided here; the peer node and the bridge record their own)."""
        return await self._single(request, DualPvp)

    async def _check_dual(self, envelope: Envelope) -> tuple[DualPvp, str]:
        """A dual PvP sent by one of our banks, with the signatures this node checks, and the
        counterparty's central bank; raises Refused."""
        core = self.core
        body = envelope.body
        if not isinstance(body, DualPvp):
            raise Refused(Reason.MALFORMED, f"expected pvp_dual, got {body.KIND}")
        await core.own_bank(body.sender)
        if any(s.endorses for s in envelope.signatures) or len(envelope.signatures) > 2:
            raise Refused(Reason.MALFORMED, "pvp_dual carries exactly both banks' signatures")
        await core.verify_party(envelope, body.sender)  # missing: MISSING_SIGNATURE
        home = await core.home_of(body.counterparty)
        if home == core.id:
            # a foreign counterparty's signature is verified by its own central bank's node,
            # which refuses to endorse a leg its bank did not sign (one P-256 check fewer)
            await core.verify_party(envelope, body.counterparty)
        if home is None:
            raise Refused(Reason.UNKNOWN_PARTICIPANT, f"unknown participant {body.counterparty}")
        if home != core.id and envelope.party_signature(body.counterparty) is None:
            raise Refused(
                Reason.MISSING_SIGNATURE, f"the instruction is not signed by {body.counterparty}"
            )
        return body, home

    async def EndorseDualPvp(
        self, request: types.SignedInstruction, context: Context
    ) -> types.SignedInstruction:
        """Called by the proposer's central bank: endorse our bank's leg of a dual PvP."""
        try:
            caller = self._peer(context, "EndorseDualPvp")
            envelope = await self._endorsement_for(request, caller, {})
            core = self.core
            counterparty = envelope.body.parties()[1]  # a pvp_dual: (sender, counterparty)
            return wire.envelope_to_proto(endorse(envelope, counterparty, core.id, core.key))
        except Refused as refusal:
            await abort(context, refusal)

    async def _endorsement_for(
        self,
        request: types.SignedInstruction,
        caller: str,
        verdicts: dict[tuple[bytes, bytes], bool],
    ) -> Envelope:
        """`_endorsable` on the request as sent; raises Refused, recording the refusal (this
        node decided it; the peer only passes it on)."""
        envelope: Envelope | None = None
        try:
            envelope = wire.envelope_from_proto(request)
            endorsable = await self._endorsable(envelope, caller, verdicts)
            self.core.replica.known.remember(envelope)  # its entry's replay takes the body
            return endorsable
        except Refused as refusal:
            self.core.refused(request, envelope, refusal)
            raise

    async def _endorsable(
        self, envelope: Envelope, caller: str, verdicts: dict[tuple[bytes, bytes], bool]
    ) -> Envelope:
        """The dual PvP, once our bank's leg may be endorsed for the proposer's central bank
        `caller` (authenticated); raises Refused. `verdicts`: the proposer's endorsement root
        signatures already checked in this call (one per batch it sent)."""
        core = self.core
        body = envelope.body
        if not isinstance(body, DualPvp):
            raise Refused(Reason.MALFORMED, f"expected pvp_dual, got {body.KIND}")
        await core.own_bank(body.counterparty)
        sender_home = await core.home_of(body.sender)
        if sender_home != caller:
            raise Refused(
                Reason.CALLER_NOT_ALLOWED,
                f"{caller} asks for the endorsement of a PvP proposed by {body.sender}, "
                "which is not one of its banks",
            )
        await core.verify_party(envelope, body.counterparty)
        await self._check_proposer_endorsement(envelope, body, caller, verdicts)
        if envelope.endorsement(body.counterparty) is not None:
            raise Refused(Reason.MALFORMED, "our bank's leg is already endorsed")
        return envelope

    async def _check_proposer_endorsement(
        self,
        envelope: Envelope,
        body: DualPvp,
        sender_home: str,
        verdicts: dict[tuple[bytes, bytes], bool],
    ) -> None:
        """The proposer's leg carries its central bank's valid endorsement; raises Refused."""
        endorsement = envelope.endorsement(body.sender)
        signature = envelope.party_signature(body.sender)
        if endorsement is None or endorsement.signer != sender_home or signature is None:
            raise Refused(
                Reason.MISSING_SIGNATURE,
                "the proposer's leg is not endorsed by its central bank",
            )
        key = await self.core.public_key_of(sender_home)
        message = endorsement_message(envelope.body_bytes, signature.value, endorsement)
        valid = False
        if key is not None and message is not None:
            verdict = verdicts.get((message, endorsement.value))
            if verdict is None:  # the first leg of its batch: the root signature
                verdict = self.core.verifier.verify(key, message, endorsement.value)
                verdicts[(message, endorsement.value)] = verdict
            valid = verdict
        if not valid:
            raise Refused(
                Reason.BAD_SIGNATURE,
                f"the endorsement of {body.sender}'s leg by {sender_home} does not verify",
            )

    async def EndorseDualPvps(
        self, request: pb.EndorseDualPvpsRequest, context: Context
    ) -> pb.EndorseDualPvpsResponse:
        """The batched EndorseDualPvp: one endorsement or refusal per instruction, in order."""
        try:
            caller = self._peer(context, "EndorseDualPvps")
        except Refused as refusal:
            await abort(context, refusal)
        return pb.EndorseDualPvpsResponse(
            results=await self._endorsements(request.instructions, caller)
        )

    async def _endorsements(
        self,
        instructions: Sequence[types.SignedInstruction],
        caller: str,
        refused: dict[int, Refused] | None = None,
    ) -> list[pb.EndorsementResult]:
        """Our banks' legs of a batch of dual PvPs from the peer node `caller`, each checked
        as EndorseDualPvp checks it and endorsed with one signature over the batch's root:
        the endorsement or refusal of each, in order (`refused`: those refused at the edge)."""
        core = self.core
        verdicts: dict[tuple[bytes, bytes], bool] = {}
        checked: list[Envelope | Refused] = []
        for index, message in enumerate(instructions):
            edge = refused.get(index) if refused else None
            if edge is not None:
                checked.append(edge)
                continue
            try:
                checked.append(await self._endorsement_for(message, caller, verdicts))
            except Refused as refusal:
                checked.append(refusal)
        # our banks' legs of the whole batch, endorsed with one signature over their root
        legs = [(e, e.body.parties()[1]) for e in checked if isinstance(e, Envelope)]
        endorsements = iter(endorse_legs(legs, core.id, core.key))
        return [
            pb.EndorsementResult(refusal=wire.refusal_to_proto(item))
            if isinstance(item, Refused)
            else pb.EndorsementResult(endorsement=wire.signature_to_proto(next(endorsements)))
            for item in checked
        ]

    async def EndorseStream(
        self,
        request_iterator: AsyncIterator[pb.EndorseStreamRequest | PartlyRefused],
        context: Context,
    ) -> AsyncIterator[pb.EndorseStreamResponse]:
        """EndorseDualPvps over one open stream: the caller authenticated once, before any
        message is read; each request answered as that call would be, under its correlation
        id, as soon as it is done (requests are worked on at once, up to STREAM_WINDOW
        instructions per stream)."""
        try:
            caller = self._peer(context, "EndorseStream")
        except Refused as refusal:
            await abort(context, refusal)

        async def endorsed(
            request: pb.EndorseStreamRequest, refused: dict[int, Refused]
        ) -> pb.EndorseStreamResponse:
            try:
                results = await self._endorsements(request.instructions, caller, refused)
            except Exception as error:  # a fault of this node: nothing endorsed, not decided
                log.exception("an endorsement request failed unexpectedly")
                unsent = Refused(Reason.UNAVAILABLE, f"the node failed to endorse: {error}")
                return pb.EndorseStreamResponse(
                    correlation_id=request.correlation_id, refusal=wire.refusal_to_proto(unsent)
                )
            return pb.EndorseStreamResponse(correlation_id=request.correlation_id, results=results)

        async with contextlib.aclosing(answered_in_window(request_iterator, endorsed)) as answers:
            async for response in answers:
                yield response

    async def SubmitStream(
        self,
        request_iterator: AsyncIterator[pb.BankSubmitRequest | PartlyRefused],
        context: Context,
    ) -> AsyncIterator[pb.BankSubmitResponse]:
        """Each instruction handled as its unary RPC would be; one response per request (for a
        batch, one result per instruction, in order), within the stream's window and the node's
        bound on streamed instructions (`answered_in_window`)."""
        answering = answered_in_window(
            request_iterator, self._answer, load=self.stream_load, shed=self._shed
        )
        async with contextlib.aclosing(answering) as answers:  # its work ends with the call
            async for response in answers:
                yield response

    async def _answer(
        self, request: pb.BankSubmitRequest, refused: dict[int, Refused]
    ) -> pb.BankSubmitResponse:
        """The response to one SubmitStream request: the status or refusal of its instruction,
        or of each instruction of its batch in order (`refused`: those refused at the edge)."""
        correlation_id = request.correlation_id
        if not request.instructions:
            (result,) = await self._results([request.instruction], {})
            if result.HasField("status"):
                return pb.BankSubmitResponse(correlation_id=correlation_id, status=result.status)
            return pb.BankSubmitResponse(correlation_id=correlation_id, refusal=result.refusal)
        if request.HasField("instruction"):
            whole = Refused(
                Reason.MALFORMED, "a request carries one instruction or a batch, not both"
            )
            return pb.BankSubmitResponse(
                correlation_id=correlation_id, refusal=wire.refusal_to_proto(whole)
            )
        results = await self._results(request.instructions, refused)
        return pb.BankSubmitResponse(correlation_id=correlation_id, results=results)

    async def _results(
        self, instructions: Sequence[types.SignedInstruction], refused: dict[int, Refused]
    ) -> list[pb.BankSubmitResult]:
        """The result of each instruction of a SubmitStream request, in order, the batch
        handled as one (`refused`: those refused at the edge, recorded here as the edge
        records a lone one)."""
        handled: list[Handled | None] = [None] * len(instructions)
        taken: list[int] = []
        for index, instruction in enumerate(instructions):
            edge = refused.get(index)
            if edge is None:
                taken.append(index)
            else:
                handled[index] = self._refused_at_edge(instruction, edge)
        if taken:
            items = [(instructions[index], None) for index in taken]
            for index, result in zip(taken, await self._handled(items), strict=True):
                handled[index] = result
        return [stream_result(cast(Handled, result)) for result in handled]

    def _refused_at_edge(self, instruction: types.SignedInstruction, edge: Refused) -> Handled:
        """An instruction of a batch refused at the edge, recorded as the edge records a lone
        one; the refusal (or what made recording it fail)."""
        try:
            alone = pb.BankSubmitRequest(instruction=instruction)
            self.core.refused_at_edge(SUBMIT_STREAM, alone, edge)
        except Exception as error:
            return error
        return edge

    def _shed(
        self, request: pb.BankSubmitRequest, refused: dict[int, Refused], bound: int
    ) -> pb.BankSubmitResponse:
        """The answer to a SubmitStream request shed because the node's streams are working on
        `bound` instructions: OVERLOADED for its instruction or each of its batch (nothing was
        done: resubmit), except those refused at the edge, which keep their final refusal."""
        overloaded = Refused(
            Reason.OVERLOADED,
            f"the node is working on {bound:,} streamed instructions, its bound; nothing was "
            "done: resubmit the same instruction id",
        )
        if not request.instructions:
            return pb.BankSubmitResponse(
                correlation_id=request.correlation_id,
                refusal=wire.refusal_to_proto(overloaded),
            )
        results = [
            stream_result(
                overloaded if index not in refused else self._refused_at_edge(item, refused[index])
            )
            for index, item in enumerate(request.instructions)
        ]
        return pb.BankSubmitResponse(correlation_id=request.correlation_id, results=results)

    async def RequestIssuance(
        self, request: pb.IssuanceRequest, context: Context
    ) -> types.InstructionStatus:
        core = self.core
        bank: str | None = None
        try:
            try:
                bank = await core.authenticate_query(
                    "/bridge.v1.CentralBank/RequestIssuance", request
                )
                body = Issue(
                    f"issue-{bank}-{request.request_id}",
                    core.id,
                    request.valid_until,
                    bank,
                    core.currency,
                    request.amount,
                    signed_at=signing_time(request.signed_at),
                )
            except Refused as refusal:
                core.refused_issuance(request, refusal, authenticated=bank is not None)
                raise
            return await core.sign_and_settle(body, stamped=request.signed_at <= 0)
        except Refused as refusal:
            await abort(context, refusal)

    async def GetInstructionStatus(
        self, request: pb.InstructionStatusQuery, context: Context
    ) -> types.InstructionStatus:
        core = self.core
        try:
            bank = await core.authenticate_query(
                "/bridge.v1.CentralBank/GetInstructionStatus", request
            )
            sender = request.sender or bank
            if sender != bank:
                # whether another bank's instruction exists must not show: until the replica
                # can tell who is a party, every such question gets the same CATCHING_UP
                core.replica.require_up_to()
            try:
                status: types.InstructionStatus = await core.bridge.GetReceipt(
                    bridge_pb.GetReceiptRequest(
                        sender=sender, instruction_id=request.instruction_id
                    ),
                    timeout=BRIDGE_DEADLINE,
                )
            except grpc.aio.AioRpcError as error:
                refusal = read_failure(error)
                if sender != bank and not refusal.reason.retryable:
                    # say nothing about other banks' instructions
                    raise Refused(
                        Reason.NOT_A_PARTY, f"{bank} is not a party to that instruction"
                    ) from error
                raise refusal from error
            if sender != bank:  # is_party needs that entry: wait for it (recorded just now)
                await core.replica.reach(status.receipt.seq, timeout=REPLICA_WAIT)
            if sender != bank and not core.replica.is_party(bank, status.receipt.seq):
                raise Refused(Reason.NOT_A_PARTY, f"{bank} is not a party to that instruction")
            return status
        except Refused as refusal:
            await abort(context, refusal)

    async def GetBalances(self, request: pb.BalancesQuery, context: Context) -> types.AccountList:
        core = self.core
        try:
            bank = await core.authenticate_query("/bridge.v1.CentralBank/GetBalances", request)
            try:
                accounts = await core.bridge.GetBalances(
                    bridge_pb.GetBalancesRequest(participant=bank), timeout=BRIDGE_DEADLINE
                )
            except grpc.aio.AioRpcError as error:
                raise read_failure(error) from error
            return types.AccountList(
                accounts=[
                    a
                    for a in accounts.accounts
                    if not request.currency or a.currency == request.currency
                ]
            )
        except Refused as refusal:
            await abort(context, refusal)

    async def GetHistory(self, request: pb.HistoryQuery, context: Context) -> pb.HistoryPage:
        core = self.core
        try:
            bank = await core.authenticate_query("/bridge.v1.CentralBank/GetHistory", request)
        except Refused as refusal:
            await abort(context, refusal)
        if not 0 <= request.limit <= HISTORY_PAGE:  # also refused at the edge (bridge.bounds)
            await abort(
                context,
                Refused(
                    Reason.BAD_PAGE_SIZE,
                    f"limit must be 0 (default {HISTORY_DEFAULT}) to {HISTORY_PAGE}: "
                    f"got {request.limit}",
                ),
            )
        limit = request.limit or HISTORY_DEFAULT
        entries = list(core.replica.entries_of(bank, max(1, request.from_seq), limit + 1))
        next_seq = entries.pop().seq if len(entries) > limit else 0
        if not next_seq:  # a short page is the whole answer only once the replica has caught up
            try:
                core.replica.require_up_to()
            except Refused as refusal:
                await abort(context, refusal)
        return pb.HistoryPage(
            entries=[
                types.EntryEvent(
                    entry=wire.entry_bytes_to_proto(e.seq, e.data), block_height=e.height
                )
                for e in entries
            ],
            next_seq=next_seq,
        )

    async def GetPvp(self, request: pb.PvpQuery, context: Context) -> types.PvpStatus:
        core = self.core
        try:
            bank = await core.authenticate_query("/bridge.v1.CentralBank/GetPvp", request)
            # another bank's PvP and no PvP at all get the same answer: nothing is revealed
            unknown = Refused(
                Reason.UNKNOWN_PVP,
                f"no PvP {preview(request.pvp_id)} proposed by {request.proposer} "
                f"with {bank} as a party",
            )
            try:
                status: types.PvpStatus = await core.bridge.GetPvp(
                    bridge_pb.GetPvpRequest(proposer=request.proposer, pvp_id=request.pvp_id),
                    timeout=BRIDGE_DEADLINE,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    raise unknown from error
                raise read_failure(error) from error
            if bank not in {status.proposer, *(leg.payer for leg in status.legs)}:
                raise unknown
            return status
        except Refused as refusal:
            await abort(context, refusal)

    async def GetSignedHead(self, request: pb.SignedHeadQuery, context: Context) -> pb.SignedHead:
        core = self.core
        try:
            await core.authenticate_query("/bridge.v1.CentralBank/GetSignedHead", request)
            head = core.replica.signed_head
            if head is None:
                raise Refused(
                    Reason.CATCHING_UP, f"{core.id} has not replayed and attested any block yet"
                )
            header, attestation = head
            genesis = core.replica.ledger.genesis
            return pb.SignedHead(
                header=wire.header_to_proto(header),
                attestation=wire.attestation_to_proto(attestation),
                chain_id=genesis.chain_id,
                genesis_hash=genesis.hash(),
            )
        except Refused as refusal:
            await abort(context, refusal)

    async def GetRefusals(self, request: pb.RefusalsQuery, context: Context) -> pb.RefusalPage:
        """The requesting bank's own instructions that this node refused itself: those it
        signed, never those that only named it as their sender."""
        core = self.core
        try:
            bank = await core.authenticate_query("/bridge.v1.CentralBank/GetRefusals", request)
            limit = page_limit(request.limit)
            return await refusal_page(core, request.from_id, limit, bank, authenticated_only=True)
        except Refused as refusal:
            await abort(context, refusal)

    async def WatchSettlements(
        self, request: pb.WatchSettlementsQuery, context: Context
    ) -> AsyncIterator[types.EntryEvent]:
        core = self.core
        try:
            bank = await core.authenticate_query("/bridge.v1.CentralBank/WatchSettlements", request)
        except Refused as refusal:
            await abort(context, refusal)
        seq = max(1, request.from_seq)
        while True:
            seen_height = core.replica.height
            entries = list(core.replica.entries_of(bank, seq, HISTORY_PAGE))
            for e in entries:
                yield types.EntryEvent(
                    entry=wire.entry_bytes_to_proto(e.seq, e.data), block_height=e.height
                )
                seq = e.seq + 1
            if not entries:
                await core.replica.wait_beyond(seen_height)


class CentralBankAdminService(pb_grpc.CentralBankAdminServicer):
    """The central bank's own operations, for holders of its admin token."""

    def __init__(self, core: CentralBankCore, admin_token: str) -> None:
        self.core = core
        self.admin_token = admin_token

    async def _authorize(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        given = str(metadata.get("authorization", ""))
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "admin operations need the central bank's admin token",
            )

    async def _run(
        self, context: Context, body: Instruction, requested_signed_at: int
    ) -> types.InstructionStatus:
        """Sign and settle `body`; `requested_signed_at` 0: the node stamped its own clock."""
        await self._authorize(context)
        try:
            return await self.core.sign_and_settle(body, stamped=requested_signed_at <= 0)
        except Refused as refusal:
            await abort(context, refusal)

    async def AdmitBank(
        self, request: pb.AdmitBankRequest, context: Context
    ) -> types.InstructionStatus:
        body = AdmitBank(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            request.body.bank,
            request.body.public_key,
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def SuspendBank(
        self, request: pb.BankStatusRequest, context: Context
    ) -> types.InstructionStatus:
        body = SetParticipantStatus(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            request.bank,
            "suspended",
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def ReactivateBank(
        self, request: pb.BankStatusRequest, context: Context
    ) -> types.InstructionStatus:
        body = SetParticipantStatus(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            request.bank,
            "active",
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: Context
    ) -> types.InstructionStatus:
        policy = request.body
        body = SetPolicy(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            policy.per_transfer_limit,
            policy.per_day_limit,
            tuple(policy.allowed_jurisdictions),
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def Issue(self, request: pb.IssueRequest, context: Context) -> types.InstructionStatus:
        issue = request.body
        body = Issue(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            issue.to,
            issue.currency,
            issue.amount,
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def FreezeAccount(
        self, request: pb.FreezeAccountRequest, context: Context
    ) -> types.InstructionStatus:
        freeze = request.body
        body = FreezeAccount(
            request.instruction_id,
            self.core.id,
            request.valid_until,
            freeze.participant,
            freeze.currency,
            freeze.frozen,
            signed_at=signing_time(request.signed_at),
        )
        return await self._run(context, body, request.signed_at)

    async def Redeem(
        self, request: types.SignedInstruction, context: Context
    ) -> types.InstructionStatus:
        await self._authorize(context)
        return await CentralBankService(self.core).RequestRedemption(request, context)

    async def ListBanks(
        self, request: pb.ListBanksRequest, context: Context
    ) -> types.ParticipantList:
        await self._authorize(context)
        try:
            banks = await self.core.bridge.ListParticipants(
                bridge_pb.ListParticipantsRequest(home_central_bank=self.core.id),
                timeout=BRIDGE_DEADLINE,
            )
        except grpc.aio.AioRpcError as error:
            await abort(context, read_failure(error))
        return types.ParticipantList(
            participants=[
                p
                for p in banks.participants
                if p.id != self.core.id and (not request.status or p.status == request.status)
            ]
        )

    async def GetCurrencySupply(
        self, request: types.CurrencySupplyRequest, context: Context
    ) -> types.CurrencySupply:
        await self._authorize(context)
        if request.currency not in ("", self.core.currency):
            await abort(
                context,
                Refused(Reason.NOT_ISSUER, f"{self.core.id} supervises {self.core.currency} only"),
            )
        try:
            supply: types.CurrencySupply = await self.core.bridge.GetCurrencySupply(
                types.CurrencySupplyRequest(currency=self.core.currency), timeout=BRIDGE_DEADLINE
            )
        except grpc.aio.AioRpcError as error:
            await abort(context, read_failure(error))
        return supply

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> types.AccountList:
        """Accounts in this central bank's currency, and every account of its own banks."""
        await self._authorize(context)
        try:
            self.core.replica.require_up_to()  # balances replayed so far may be stale
        except Refused as refusal:
            await abort(context, refusal)
        ledger = self.core.replica.ledger
        accounts = []
        for (owner, currency), (available, held) in sorted(ledger.balances.items()):
            participant = ledger.participants.get(owner)
            supervised = currency == self.core.currency or (
                participant is not None and participant.home_central_bank == self.core.id
            )
            if not supervised:
                continue
            if (request.participant and owner != request.participant) or (
                request.currency and currency != request.currency
            ):
                continue
            frozen = (owner, currency) in ledger.frozen
            accounts.append(wire.account_to_proto(owner, currency, available, held, frozen))
        return types.AccountList(accounts=accounts)

    async def ListRefusals(
        self, request: pb.ListRefusalsRequest, context: Context
    ) -> pb.RefusalPage:
        """Every instruction this node refused itself (or one sender's), oldest first."""
        await self._authorize(context)
        try:
            limit = page_limit(request.limit)
            return await refusal_page(self.core, request.from_id, limit, request.sender)
        except Refused as refusal:
            await abort(context, refusal)
