"""The store-backed idempotency index: bounded memory, every receipt still found.

`StoredReceipts` is driven here over a lookup of a plain table (what a store's entries table
answers), and inside a ledger: pending receipts answer retries within a batch, a rollback
forgets them, confirmed ones move to a cache of bounded size and are looked up beyond it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from bridge.core.ledger import Ledger, ReceiptKey, SignatureCheck
from bridge.domain import Outcome, Receipt
from bridge.errors import StoreError
from bridge.store.receipts import KEYS_PER_QUERY, StoredReceipts, chunks
from tests.factories import BANKS, T0, admit_bank, issue, network, pay


class Table:
    """The receipts a store holds, and the look-ups it was asked."""

    def __init__(self) -> None:
        self.rows: dict[ReceiptKey, Receipt] = {}
        self.asked: list[list[ReceiptKey]] = []
        self.down = False

    def lookup(self, keys: Sequence[ReceiptKey]) -> Iterable[Receipt]:
        if self.down:
            raise StoreError("the store is away")
        self.asked.append(list(keys))
        return [self.rows[k] for k in keys if k in self.rows]

    def commit(self, index: StoredReceipts) -> None:
        self.rows.update(index.pending())
        index.confirm()


def receipt(n: int) -> Receipt:
    return Receipt("ICBC", f"tx-{n}", bytes([n % 256]) * 32, Outcome.SETTLED, n)


def key(n: int) -> ReceiptKey:
    return ("ICBC", f"tx-{n}")


def test_memory_stays_bounded_and_every_receipt_is_found() -> None:
    """With a cache of 10, 1,000 confirmed receipts leave at most 20 in memory, and every one
    of them is still found (looked up in the table)."""
    table = Table()
    index = StoredReceipts(table.lookup, cached=10)
    for n in range(1, 1_001):
        index.add(key(n), receipt(n))
        if n % 7 == 0:
            table.commit(index)
    table.commit(index)
    assert index.held() <= 20
    assert all(index.get(key(n)) == receipt(n) for n in range(1, 1_001))
    assert index.held() <= 20


def test_retry_in_the_same_batch_finds_the_pending_receipt() -> None:
    """A key added in this batch is answered from memory, without a look-up."""
    table = Table()
    index = StoredReceipts(table.lookup)
    index.add(key(1), receipt(1))
    assert index.get(key(1)) == receipt(1)
    assert table.asked == []


def test_rollback_forgets_pending_receipts() -> None:
    """A rolled-back batch's receipts are gone: the key is looked up (and not found) again."""
    table = Table()
    index = StoredReceipts(table.lookup)
    index.add(key(1), receipt(1))
    index.rollback()
    assert index.get(key(1)) is None
    assert table.asked == [[key(1)]]
    assert index.pending() == {}


def test_absent_keys_are_asked_once_per_batch() -> None:
    """A key looked up and missing is not asked again within the batch, but is in the next
    (another batch may have settled it meanwhile)."""
    table = Table()
    index = StoredReceipts(table.lookup)
    index.prefetch([key(1), key(2), key(1)])
    assert table.asked == [[key(1), key(2)]]
    assert index.get(key(1)) is None
    assert index.get(key(2)) is None
    assert len(table.asked) == 1
    index.confirm()
    table.rows[key(2)] = receipt(2)
    assert index.get(key(2)) == receipt(2)
    assert len(table.asked) == 2


def test_unsaved_receipts_are_held_until_saved() -> None:
    """Without durability on confirm (a replica's checkpoint is written later), confirmed
    receipts stay in memory, beyond the cache size, until `saved` covers their seq."""
    table = Table()
    index = StoredReceipts(table.lookup, cached=5, durable_on_confirm=False)
    for n in range(1, 51):
        index.add(key(n), receipt(n))
    index.confirm()
    assert index.held() == 50
    assert all(index.get(key(n)) == receipt(n) for n in range(1, 51))
    assert table.asked == []  # all answered from memory
    table.rows.update((key(n), receipt(n)) for n in range(1, 31))  # the write of 1..30
    index.saved(30)
    assert index.held() <= 10 + 20
    assert all(index.get(key(n)) == receipt(n) for n in range(31, 51))
    assert all(index.get(key(n)) == receipt(n) for n in range(1, 31))


def test_a_failing_store_fails_the_lookup_not_silently() -> None:
    """When the store cannot answer, `get` raises: a miss is never assumed."""
    table = Table()
    index = StoredReceipts(table.lookup)
    table.down = True
    with pytest.raises(StoreError):
        index.get(key(1))
    table.down = False
    assert index.get(key(1)) is None


def test_ledger_over_stored_receipts_applies_each_instruction_once() -> None:
    """A ledger whose receipts live in the table: a retry in the same batch, a retry after
    the batch is committed and a retry after a rollback-and-resubmit all settle once."""
    net = network()
    table = Table()
    ledger = Ledger(
        net.genesis, check=SignatureCheck.NONE, receipts=StoredReceipts(table.lookup, cached=2)
    )
    for bank, cb in BANKS:
        ledger.apply(admit_bank(net, cb, bank), T0)
        ledger.apply(issue(net, cb, bank, 1_000), T0)
    ledger.take_batch()
    assert isinstance(ledger.receipts, StoredReceipts)
    table.rows.update(ledger.receipts.items())

    payment = pay(net, "ICBC", "CCB", 10)
    first = ledger.apply(payment, T0 + 1)
    again = ledger.apply(payment, T0 + 1)
    assert again.duplicate
    assert again.seq == first.seq
    ledger.rollback()  # the commit failed
    assert ledger.balance("ICBC", "CNY") == (1_000, 0)

    settled = ledger.apply(payment, T0 + 2)
    assert not settled.duplicate
    table.commit(ledger.receipts)
    ledger.confirm()
    for n in range(5):  # push the payment out of the cache
        extra = pay(net, "CCB", "ICBC", 1, instruction_id=f"extra-{n}")
        ledger.apply(extra, T0 + 3)
        table.commit(ledger.receipts)
        ledger.confirm()
    late = ledger.apply(payment, T0 + 4)
    assert late.duplicate
    assert late.seq == settled.seq
    assert ledger.balance("ICBC", "CNY") == (1_000 - 10 + 5, 0)


def test_lookups_use_a_few_statement_sizes() -> None:
    """Whatever the number of keys, look-ups are cut into slices of the fixed sizes (padded
    with a repeated key), so the prepared-statement cache stays small; no key is lost."""
    sizes = set()
    for count in range(1, 1_001):
        keys = [key(n) for n in range(count)]
        parts = list(chunks(keys, KEYS_PER_QUERY))
        sizes.update(len(p) for p in parts)
        assert {k for p in parts for k in p} == set(keys)
    assert sizes == set(KEYS_PER_QUERY)
