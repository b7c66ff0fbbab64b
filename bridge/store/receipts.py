"""The idempotency index of a node: receipts looked up in a store's own table, not loaded.

Every applied instruction's receipt is on disk already: a bridge store has it in its entries
table (unique on sender and instruction id), a central bank replica's checkpoint in its receipts
table. `StoredReceipts` gives the ledger core (`bridge.core.ledger.ReceiptIndex`) those look-ups
and keeps in memory only what the store cannot answer yet or what is likely asked again:

- the pending receipts of the batch being applied (a retry within the same batch finds its
  first copy here; a rolled-back batch forgets them);
- with `durable_on_confirm=False` (a replica, whose checkpoint is written later), the confirmed
  receipts not yet on disk, until the owner says they are (`saved`);
- a bounded cache of recent receipts (two generations of at most `cached` each);
- the keys of the current batch already looked up and not found (so `preverify` and `apply`
  do not ask twice), forgotten at the end of the batch.

So memory is bounded whatever the length of the log, and a restart loads nothing: the first
retry of an old instruction is found by its look-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Literal, Protocol

from bridge.core.ledger import Ledger, PvpState, ReceiptKey, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Genesis, Outcome, Receipt

RECENT_RECEIPTS = 4_096  # receipts kept per cache generation (two generations at most)
# SQLite look-ups: the statement sizes (two parameters a key); 4 for the bridge's small blocks
# (2-4 instructions under unary load), which a 16-key statement took half as long again, and
# for a replica's look-up of each block's keys at low rates
KEYS_PER_QUERY = (1, 4, 16, 128, 400)

# the receipts the store holds among these keys (in any order; missing keys are left out)
Lookup = Callable[[Sequence[ReceiptKey]], Iterable[Receipt]]


class IndexReads(Protocol):
    """What a ledger over a store looks up there instead of holding in memory."""

    def receipts_for(self, keys: Sequence[ReceiptKey]) -> list[Receipt]: ...

    def closed_pvp(self, key: tuple[str, str]) -> PvpState | None: ...


def stored_ledger(
    store: IndexReads, genesis: Genesis, *, verifier: Verifier | None, check: SignatureCheck
) -> Ledger:
    """An empty ledger whose receipts and closed PvPs are looked up in `store`, not loaded."""
    return Ledger(
        genesis,
        verifier=verifier,
        check=check,
        receipts=StoredReceipts(store.receipts_for),
        closed_pvps=store.closed_pvp,
    )


class StoredReceipts:
    """A `ReceiptIndex` whose committed receipts are looked up in a store."""

    def __init__(
        self, lookup: Lookup, *, cached: int = RECENT_RECEIPTS, durable_on_confirm: bool = True
    ) -> None:
        if cached < 1:
            raise ValueError("the cache holds at least one receipt")
        self._lookup = lookup
        self._cached = cached
        self._durable_on_confirm = durable_on_confirm
        self._pending: dict[ReceiptKey, Receipt] = {}
        self._unsaved: dict[ReceiptKey, Receipt] = {}  # confirmed, not yet in the store
        self._recent: dict[ReceiptKey, Receipt] = {}
        self._older: dict[ReceiptKey, Receipt] = {}
        self._absent: set[ReceiptKey] = set()  # looked up in this batch and not found
        self.lookups = 0  # look-ups sent to the store (each may carry many keys)

    # ------------------------------------------------------------------ ReceiptIndex

    def get(self, key: ReceiptKey) -> Receipt | None:
        found = self._in_memory(key)
        if found is not None or key in self._absent:
            return found
        self.prefetch((key,))
        return self._in_memory(key)

    def __getitem__(self, key: ReceiptKey) -> Receipt:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def prefetch(self, keys: Iterable[ReceiptKey]) -> None:
        """Look up in one go the keys neither in memory nor known absent in this batch."""
        wanted = [
            k for k in dict.fromkeys(keys) if k not in self._absent and self._in_memory(k) is None
        ]
        if not wanted:
            return
        self.lookups += 1
        found = set()
        for receipt in self._lookup(wanted):
            key = (receipt.sender, receipt.instruction_id)
            found.add(key)
            self._remember(key, receipt)
        self._absent.update(k for k in wanted if k not in found)

    def add(self, key: ReceiptKey, receipt: Receipt) -> None:
        self._pending[key] = receipt
        self._absent.discard(key)

    def pending(self) -> Mapping[ReceiptKey, Receipt]:
        return self._pending

    def confirm(self) -> None:
        if self._durable_on_confirm:
            for key, receipt in self._pending.items():
                self._remember(key, receipt)
        else:
            self._unsaved.update(self._pending)
        self._pending = {}
        self._absent = set()

    def rollback(self) -> None:
        self._pending = {}
        self._absent = set()

    def load(self, rows: Iterable[tuple[ReceiptKey, Receipt]]) -> None:
        """Replace the cache with `rows` (the store stays the index; nothing is lost)."""
        self._recent, self._older = {}, {}
        for key, receipt in rows:
            self._remember(key, receipt)

    def items(self) -> Iterator[tuple[ReceiptKey, Receipt]]:
        """The committed receipts in memory: the cache and those not yet saved."""
        return chain(self._older.items(), self._recent.items(), self._unsaved.items())

    # ------------------------------------------------------------------ durability

    def saved(self, up_to_seq: int) -> None:
        """The receipts of entries up to `up_to_seq` are now in the store: they need no longer
        be held (they move to the bounded cache)."""
        kept: dict[ReceiptKey, Receipt] = {}
        for key, receipt in self._unsaved.items():
            if receipt.seq <= up_to_seq:
                self._remember(key, receipt)
            else:
                kept[key] = receipt
        self._unsaved = kept

    def held(self) -> int:
        """Receipts held in memory (pending, unsaved and cached)."""
        return len(self._pending) + len(self._unsaved) + len(self._recent) + len(self._older)

    # ------------------------------------------------------------------ internals

    def _in_memory(self, key: ReceiptKey) -> Receipt | None:
        for layer in (self._pending, self._unsaved, self._recent, self._older):
            found = layer.get(key)
            if found is not None:
                return found
        return None

    def _remember(self, key: ReceiptKey, receipt: Receipt) -> None:
        recent = self._recent
        recent[key] = receipt
        if len(recent) >= self._cached:
            self._older, self._recent = recent, {}


def chunks(keys: Sequence[ReceiptKey], sizes: Sequence[int]) -> Iterator[Sequence[ReceiptKey]]:
    """`keys` in slices of at most `sizes[-1]`, each padded (by repeating its last key) to the
    least of `sizes` that holds it: a statement of `n` placeholders is prepared and cached per
    `n`, so a few sizes keep the statement cache small whatever the batch sizes."""
    largest = sizes[-1]
    for start in range(0, len(keys), largest):
        part = keys[start : start + largest]
        size = next(s for s in sizes if s >= len(part))
        yield [*part, *[part[-1]] * (size - len(part))]


def sqlite_receipts_for(
    db: sqlite3.Connection, table: Literal["entries", "receipts"], keys: Sequence[ReceiptKey]
) -> list[Receipt]:
    """The receipts among those (sender, instruction id) keys found in `table` of a SQLite
    file (the bridge's entries, or a replica checkpoint's receipts), by their unique index, in
    statements of a few fixed sizes (`chunks`)."""
    found: dict[tuple[str, str], Receipt] = {}  # a padded key comes back more than once
    for part in chunks(keys, KEYS_PER_QUERY):
        cursor = db.execute(
            "WITH k(s, i) AS (VALUES " + ", ".join(["(?, ?)"] * len(part)) + ") "
            "SELECT r.sender, r.instruction_id, r.body_hash, r.outcome, r.seq "
            f"FROM k JOIN {table} r ON r.sender = k.s AND r.instruction_id = k.i",
            [value for key in part for value in key],
        )
        for sender, instruction_id, body_hash, outcome, seq in cursor:
            found[(sender, instruction_id)] = Receipt(
                sender, instruction_id, bytes(body_hash), Outcome(outcome), seq
            )
    return list(found.values())
