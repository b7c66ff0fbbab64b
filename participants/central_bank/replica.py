"""A central bank's own replica of the bridge ledger, and its attestation of the chain.

The node follows the bridge's block stream. For each block it checks the hash link to the
previous block, the Merkle root over the entries, that time only moves forward (the block is
sealed no earlier than the block before it; each entry is applied no earlier than the entry or
block before it and no later than its block), and replays every entry through its own copy of
the ledger core, which must reproduce the logged outcome. A block whose times go backwards is
refused and logged at ERROR once. The node signs the header of the latest block it has checked
(`attest_head`): since every header commits to its predecessor, that one attestation covers the
whole chain up to it, so the node attests heights at its own pace rather than every block. It
also indexes, per participant, the entries that concern them, which serves its banks' history
and settlement streams.

With a checkpoint (`participants.central_bank.checkpoint`) the replica writes what changed to
disk every `CHECKPOINT_BLOCKS` blocks, `CHECKPOINT_ENTRIES` entries or `CHECKPOINT_SECONDS`
seconds (off the event loop), and
keeps in memory only the index of the entries replayed since: history below the checkpoint is
read from it. A restart loads the checkpoint and replays only the blocks after it; the node
first checks that the bridge's block at the checkpoint's height has the same hash, and starts
over from genesis (`reset`) if not. Without a checkpoint a restart replays the whole chain.

Whatever it has to replay takes a while on a long log. Until it has reached the bridge's sealed
height (as the bridge reported it when the node connected), whatever it would answer from its
index may be incomplete, so `require_up_to` refuses with CATCHING_UP (retryable) rather than
let a short page pass for the whole answer.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import logging
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, cast

from bridge.core.ledger import Ledger, PvpState, SignatureCheck
from bridge.crypto import Signer, Verifier
from bridge.domain import Entry, Genesis, KnownBodies, ParticipantId
from bridge.errors import LogIntegrityError, Reason, Refused, StoreError
from bridge.events import entry_parties
from bridge.log.blocks import Attestation, BlockHeader, attest
from bridge.log.merkle import merkle_root
from bridge.metrics import BLOCK_ENTRIES, stage
from bridge.store.receipts import StoredReceipts
from participants.central_bank.checkpoint import CheckpointError, Delta, ReplicaCheckpoint

REPLAY = stage("replay", thread_cpu=True)  # checking and replaying one block
ATTEST = stage("attest", thread_cpu=True)  # signing an attestation of the head
CHECKPOINT = stage("checkpoint")  # writing the replica's checkpoint
CHECKPOINT_BLOCKS = 500  # a checkpoint at least every so many blocks replayed ...
# ... or entries: what waits for the next write is held in memory, so this bounds it when the
# replica replays fast (catching up after a restart) whatever the block sizes ...
CHECKPOINT_ENTRIES = 10_000
CHECKPOINT_SECONDS = 5.0  # ... or so many seconds, whichever comes first

log = logging.getLogger("participants.central_bank.replica")


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    return trim


_MALLOC_TRIM = _libc_malloc_trim() if sys.platform == "linux" else None


def release_freed_memory() -> None:
    """Hand the heap memory freed since back to the operating system. glibc keeps freed pages
    for reuse, so without this the resident set keeps the high-water mark of the largest
    checkpoint delta ever built (measured: ~19 MiB of a replica's 99 MiB after 100k entries)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    seq: int
    height: int
    data: bytes  # canonical entry bytes


class Replica:
    def __init__(
        self,
        genesis: Genesis,
        *,
        central_bank: ParticipantId,
        signer: Signer,
        verifier: Verifier | None,
        check: SignatureCheck,
        checkpoint: ReplicaCheckpoint | None = None,
    ) -> None:
        self.central_bank = central_bank
        self.signer = signer
        self._verifier = verifier
        self._check = check
        self.checkpoint = checkpoint
        self._refused: set[bytes] = set()  # hashes of blocks refused for going back in time
        # the latest attestation made here and the block it signs (the signed head)
        self.signed_head: tuple[BlockHeader, Attestation] | None = None
        # the tasks waiting for the next replayed block (or verified checkpoint): woken by
        # resolving their futures, with nothing to do while nobody waits
        self._waiters: list[asyncio.Future[None]] = []
        # the bridge's sealed height when last heard of (None: not heard of since the start)
        self.bridge_height: int | None = None
        self.replayed_blocks = 0  # blocks replayed since the start (not those restored)
        self._writing: asyncio.Future[None] | None = None  # the checkpoint write under way
        self._delta_writing: Delta | None = None  # the changes that write carries
        # the envelopes this node decoded at its edge, whose entries' replay takes their body
        self.known = KnownBodies()
        self._start_from(self._new_ledger(genesis), None)

    def _new_ledger(self, genesis: Genesis) -> Ledger:
        """An empty ledger; with a checkpoint, its receipts and closed PvPs are looked up in
        the checkpoint file (receipts are held in memory only until written there) instead of
        all kept in memory."""
        checkpoint = self.checkpoint
        return Ledger(
            genesis,
            verifier=self._verifier,
            check=self._check,
            receipts=None if checkpoint is None else checkpoint.receipt_index(),
            closed_pvps=None if checkpoint is None else self._closed_pvp,
        )

    def _closed_pvp(self, key: tuple[str, str]) -> PvpState | None:
        """A PvP the ledger no longer holds: its newest state among the changes not yet
        written (the ledger drops a closed PvP once its block is replayed, before the
        checkpoint holds the closing), then in the checkpoint file."""
        for delta in (self._delta, self._delta_writing):
            if delta is not None:
                state = delta.changes.get("pvps", {}).get(key)
                if state is not None:
                    return cast(PvpState, state)
        assert self.checkpoint is not None  # the look-up is given only with a checkpoint
        return self.checkpoint.closed_pvp(key)

    def _start_from(self, ledger: Ledger, head: BlockHeader | None) -> None:
        self.ledger = ledger
        self.head = head  # the newest block checked and replayed
        self.height = 0 if head is None else head.height
        self.head_hash = ledger.genesis.hash() if head is None else head.hash()
        self.head_time = 0 if head is None else head.time  # time only moves forward
        # per participant, the entries replayed and not yet in the checkpoint
        self._index: dict[ParticipantId, list[IndexedEntry]] = defaultdict(list)
        self._delta = Delta()  # what changed since the last checkpoint write
        if head is None:  # the founding state (central banks, currencies) is in no block
            self._delta.merge(ledger.tables())
        self.checkpoint_height = self.height  # the height the checkpoint holds
        self._checkpoint_seq = self.last_seq  # entries up to this seq are in the checkpoint
        self._checkpoint_time = time.monotonic()
        # restored from a checkpoint, not yet checked against the bridge's block at its height
        self.unverified_checkpoint = head is not None

    # ------------------------------------------------------------------ checkpoint

    def restore(self) -> bool:
        """Load the checkpoint, if there is a usable one; an unusable one is discarded with
        one log line (the replica then replays from genesis). Call before the first block."""
        if self.checkpoint is None or self.height:
            return False
        genesis = self.ledger.genesis
        try:
            restored = self.checkpoint.load(genesis, verifier=self._verifier, check=self._check)
        except (CheckpointError, sqlite3.Error) as error:
            self.discard_checkpoint(f"unusable: {error}")
            return False
        if restored is None:
            return False
        self._start_from(restored.ledger, restored.head)
        log.info(
            "replica restored from its checkpoint",
            extra={"central_bank": self.central_bank, "height": self.height},
        )
        return True

    def discard_checkpoint(self, why: str) -> None:
        """Delete the checkpoint file, saying why (the next write starts it afresh)."""
        if self.checkpoint is None:
            return
        log.warning(
            "replica checkpoint discarded",
            extra={
                "central_bank": self.central_bank,
                "path": str(self.checkpoint.path),
                "why": why,
            },
        )
        self.checkpoint.discard()

    def reset(self, why: str) -> None:
        """Forget everything replayed or restored and start over from genesis (the restored
        checkpoint does not match the bridge's chain)."""
        self.discard_checkpoint(why)
        genesis = self.ledger.genesis
        self._start_from(self._new_ledger(genesis), None)
        self.signed_head = None

    def checkpoint_verified(self) -> None:
        """The bridge's block at the checkpoint's height has the checkpoint's head hash."""
        self.unverified_checkpoint = False
        self._wake()

    def checkpoint_due(self) -> bool:
        """Whether enough blocks or time went by since the last checkpoint write."""
        if self.checkpoint is None or self.height == self.checkpoint_height:
            return False
        return (
            self.height - self.checkpoint_height >= CHECKPOINT_BLOCKS
            or self.last_seq - self._checkpoint_seq >= CHECKPOINT_ENTRIES
            or time.monotonic() - self._checkpoint_time >= CHECKPOINT_SECONDS
        )

    async def save_checkpoint(self) -> None:
        """Write what changed since the last checkpoint, in a worker thread. On failure, or
        when the caller is cancelled meanwhile, the changes are kept for the next write (every
        write is an idempotent upsert, so writing them twice is harmless)."""
        if self._writing is not None:  # a write its caller stopped waiting for: let it end
            await asyncio.wait([self._writing])
            if not self._writing.cancelled():
                self._writing.exception()  # retrieved: its changes are kept in any case
            self._writing = None
        checkpoint, head = self.checkpoint, self.head
        if checkpoint is None or head is None or self.height == self.checkpoint_height:
            return
        delta, self._delta = self._delta, Delta()
        self._delta_writing = delta
        next_seq = self.ledger.next_seq
        self._checkpoint_time = time.monotonic()
        writing = asyncio.ensure_future(
            asyncio.to_thread(checkpoint.write, self.ledger.genesis, head, next_seq, delta)
        )
        self._writing = writing
        try:
            with CHECKPOINT.timed(len(delta.entries)):
                await asyncio.shield(writing)
            self._writing = None
            self._delta_writing = None
        except BaseException as error:
            self._delta_writing = None  # its changes go back into the pending delta
            delta.merge(self._delta.changes)  # changes made meanwhile are the newer
            delta.entries += self._delta.entries
            delta.parties += self._delta.parties
            self._delta = delta
            if not isinstance(error, sqlite3.Error | OSError):
                raise  # cancelled: the write goes on; the next waits for it
            self._writing = None
            log.warning(
                "replica checkpoint not written",
                extra={
                    "central_bank": self.central_bank,
                    "height": head.height,
                    "error": str(error),
                },
            )
            return
        if self.height < head.height:  # pragma: no cover - reset while writing
            return
        self.checkpoint_height = head.height
        self._checkpoint_seq = next_seq - 1
        done = self._checkpoint_seq
        receipts = self.ledger.receipts
        if isinstance(receipts, StoredReceipts):
            receipts.saved(done)  # written: they can be looked up in the file now
        for party, entries in list(self._index.items()):
            start = bisect.bisect_right(entries, done, key=lambda e: e.seq)
            if start == len(entries):
                del self._index[party]
            elif start:
                self._index[party] = entries[start:]
        del delta  # written: its rows are garbage now
        release_freed_memory()

    # ------------------------------------------------------------------ catching up

    def bridge_sealed(self, height: int) -> None:
        """Record the bridge's sealed height, as it reported it (on each (re)connection)."""
        self.bridge_height = max(height, self.bridge_height or 0)

    @property
    def catching_up(self) -> bool:
        """True until the replica has replayed up to the bridge's last reported height."""
        return self.bridge_height is None or self.height < self.bridge_height

    @property
    def last_seq(self) -> int:
        """The sequence number of the last entry replayed (0: none)."""
        return self.ledger.next_seq - 1

    def require_up_to(self, seq: int | None = None) -> None:
        """Refuse with CATCHING_UP (retryable) while the replica cannot answer completely:
        behind the bridge's height, or (with `seq`) not yet past that entry."""
        if not self.catching_up and (seq is None or seq <= self.last_seq):
            return
        bridge = "not yet known" if self.bridge_height is None else str(self.bridge_height)
        raise Refused(
            Reason.CATCHING_UP,
            f"this node is catching up with the bridge's log: replayed to height {self.height}, "
            f"the bridge's sealed height is {bridge}; ask again shortly",
        )

    def apply_block(self, header: BlockHeader, entries: list[bytes]) -> None:
        """Verify one block against the replica and replay it; raises LogIntegrityError."""
        with REPLAY.timed(len(entries)):
            self._replay(header, entries)
        BLOCK_ENTRIES.observe(len(entries))

    def attest_head(self) -> Attestation | None:
        """This central bank's attestation of the newest replayed block (and so of the chain
        up to it), kept as the signed head; None before the first block."""
        head = self.head
        if head is None:
            return None
        with ATTEST.timed():
            attestation = attest(head, self.central_bank, self.signer)
        self.signed_head = (head, attestation)
        return attestation

    def _replay(self, header: BlockHeader, entries: list[bytes]) -> None:
        where = f"block {header.height}"
        if header.height != self.height + 1:
            raise LogIntegrityError(where, f"expected height {self.height + 1}")
        if header.prev_hash != self.head_hash:
            raise LogIntegrityError(where, "does not link to the previous block")
        if header.first_seq != self.ledger.next_seq or header.entry_count != len(entries):
            raise LogIntegrityError(where, "entry range does not follow the previous block")
        if merkle_root(entries) != header.merkle_root:
            raise LogIntegrityError(where, "Merkle root does not match its entries")
        if header.time < self.head_time:
            self._backwards(
                header,
                f"sealed at {header.time}, before block {self.height} ({self.head_time})",
            )
        ledger = self.ledger
        parsed = []
        floor = self.head_time
        known = self.known
        decoded = [Entry.from_canonical_bytes(data, known) for data in entries]
        try:
            # the block's instruction ids looked up in the checkpoint at once (none should be
            # found)
            ledger.receipts.prefetch(
                (e.envelope.body.sender, e.envelope.body.instruction_id) for e in decoded
            )
            for entry, data in zip(decoded, entries, strict=True):
                if not floor <= entry.time <= header.time:
                    self._backwards(
                        header,
                        f"entry {entry.seq} applied at {entry.time}, outside "
                        f"[{floor}, {header.time}] (the entry or block before it, its block)",
                    )
                floor = entry.time
                receipt = ledger.apply(entry.envelope, entry.time)
                if (
                    receipt.duplicate
                    or receipt.outcome is not entry.outcome
                    or receipt.seq != entry.seq
                ):
                    raise LogIntegrityError(
                        f"{where}, entry {entry.seq}",
                        f"replay gives {receipt.outcome.value}, the log says {entry.outcome.value}",
                    )
                parsed.append((entry, data))
        except (Refused, LogIntegrityError):
            ledger.rollback()
            raise
        except (sqlite3.Error, OSError) as error:  # the checkpoint's look-ups: replay it again
            ledger.rollback()
            raise StoreError(f"{where}: checkpoint look-up failed: {error!r}") from error
        height = header.height
        index = self._index
        if self.checkpoint is None:
            for entry, data in parsed:
                indexed = IndexedEntry(entry.seq, height, data)  # one value for every party
                for party in entry_parties(entry, ledger):
                    index[party].append(indexed)
        else:
            delta = self._delta
            for entry, data in parsed:
                seq = entry.seq
                delta.entries.append((seq, height, data))
                indexed = IndexedEntry(seq, height, data)
                for party in entry_parties(entry, ledger):
                    index[party].append(indexed)
                    delta.parties.append((party, seq))
            delta.merge(ledger.pending_changes())
        ledger.confirm()
        self.replayed_blocks += 1
        self.height = height
        self.head_hash = header.hash()
        self.head_time = header.time
        self.head = header
        self._wake()

    def _backwards(self, header: BlockHeader, what: str) -> NoReturn:
        """Refuse a block whose times go backwards; say so loudly, once per block."""
        message = f"time goes backwards: {what}; not attesting"
        block_hash = header.hash()
        if block_hash not in self._refused:
            self._refused.add(block_hash)
            log.error(
                "block refused: time goes backwards",
                extra={
                    "central_bank": self.central_bank,
                    "height": header.height,
                    "block_hash": block_hash.hex(),
                    "detail": what,
                },
            )
        raise LogIntegrityError(f"block {header.height}", message)

    def _wake(self) -> None:
        """Wake every task waiting in `wait_beyond` (they check again what they wait for)."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_beyond(self, height: int) -> None:
        """Wait until a block above `height` is replayed (and, after a restart, the restored
        checkpoint is confirmed by the bridge's block: a restored head is attested only then)."""
        while self.height <= height or self.unverified_checkpoint:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise

    async def reach(self, seq: int, timeout: float) -> None:
        """Wait until the entry at `seq` is replayed, at most `timeout` seconds; raises Refused
        (CATCHING_UP) if it is not by then."""
        try:
            async with asyncio.timeout(timeout):
                while seq > self.last_seq:
                    await self.wait_beyond(self.height)
        except TimeoutError:
            pass
        self.require_up_to(seq)

    def is_party(self, participant: ParticipantId, seq: int) -> bool:
        """Whether the entry at `seq` concerns `participant` (False if not replayed yet)."""
        found = next(self.entries_of(participant, seq, 1), None)
        return found is not None and found.seq == seq

    def entries_of(
        self, participant: ParticipantId, from_seq: int, limit: int
    ) -> Iterator[IndexedEntry]:
        """The entries concerning `participant` from `from_seq` on, at most `limit`: those in
        the checkpoint read from it, the newer ones from memory."""
        if self.checkpoint is not None and from_seq <= self._checkpoint_seq and limit > 0:
            stored = self.checkpoint.entries_of(participant, from_seq, self._checkpoint_seq, limit)
            for seq, height, data in stored:
                yield IndexedEntry(seq, height, data)
            limit -= len(stored)
            from_seq = self._checkpoint_seq + 1
            if limit <= 0:
                return
        entries = self._index.get(participant, [])
        start = bisect.bisect_left(entries, from_seq, key=lambda e: e.seq)
        yield from entries[start : start + limit]
