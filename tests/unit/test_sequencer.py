"""The sequencer over a real SQLite file: a failing disk is logged once per episode, with cause.

The disk is "filled" with SQLite's own `PRAGMA max_page_count` on the store's connection:
every write that needs a new page then fails with "database or disk is full", exactly as on a
full file system, and freeing it (raising the bound again) lets writes through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.crypto import FastVerifier
from bridge.domain import Receipt
from bridge.errors import Refused, StoreError
from bridge.log.blocks import attest
from bridge.node.sequencer import MonotonicClock, Sequencer
from bridge.settlement import OutboxRow, SettlementEngine
from bridge.store.sqlite import SqliteStore
from tests.factories import T0, Network, admit_bank, issue, network, pay

FULL_CAUSE = "database or disk is full"
READ_ONLY_CAUSE = "attempt to write a readonly database"


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bridge-sequencer-") as tmp:
        yield Path(tmp) / "ledger.sqlite"


@pytest.fixture
async def sequencer(db_path: Path, net: Network) -> AsyncIterator[Sequencer]:
    """A running sequencer whose ledger already holds ICBC, admitted and funded."""
    store = SqliteStore(db_path)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    sequencer = Sequencer(engine, clock=MonotonicClock(lambda: T0 + 1, start=T0))
    sequencer.start()
    try:
        for envelope in (admit_bank(net, "PBOC", "ICBC"), admit_bank(net, "PBOC", "CCB")):
            assert isinstance(await sequencer.submit(envelope), Receipt)
        assert isinstance(await sequencer.submit(issue(net, "PBOC", "ICBC", 1_000_000)), Receipt)
        yield sequencer
    finally:
        await sequencer.stop()
        store.close()


def fill_disk(store: SqliteStore) -> None:
    """Cap the file at its current size: writes fail once the room left in its pages is used."""
    # max_page_count is per connection: it must be set on the store's own writing connection
    store._db.execute("PRAGMA max_page_count = 1")  # never below the current size: caps it there


def free_disk(store: SqliteStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_full_disk_is_logged_once_with_its_cause_and_once_on_recovery(
    sequencer: Sequencer, net: Network, caplog: pytest.LogCaptureFixture
) -> None:
    """Block commits failing on a full disk: one ERROR line naming the cause, one on recovery."""
    caplog.set_level(logging.INFO, logger="bridge")
    store = sequencer.engine.store
    fill_disk(store)

    # the pages may have room for a few more blocks: settle until the first commit fails
    settled = 0
    while isinstance(await sequencer.submit(pay(net, "ICBC", "CCB", 10 + settled)), Receipt):
        settled += 1
        assert settled < 500, "the capped file never filled up"
    for i in range(3):  # then every commit fails: each answered retryable, none settled
        result = await sequencer.submit(pay(net, "ICBC", "CCB", 1_000 + i))
        assert isinstance(result, Refused), result
        assert result.reason.retryable

    logged = problems(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].levelno == logging.ERROR
    assert FULL_CAUSE in logged[0].getMessage()
    assert logged[0].exc_info is None, "an expected store failure is logged without traceback"

    free_disk(store)
    assert isinstance(await sequencer.submit(pay(net, "ICBC", "CCB", 99)), Receipt)
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert "4 failures" in recovered[0].getMessage()
    assert len(problems(caplog)) == 1


async def test_failing_attestation_writes_are_logged_once_without_traceback(
    sequencer: Sequencer, net: Network, caplog: pytest.LogCaptureFixture
) -> None:
    """Attestations that cannot be stored: one ERROR line with the cause, none per failure."""
    caplog.set_level(logging.INFO, logger="bridge")
    store = sequencer.engine.store
    head = store.head()
    assert head is not None
    store._db.execute("PRAGMA query_only = ON")  # every write refused by SQLite itself

    for central_bank in net.central_banks:
        with pytest.raises(StoreError, match=READ_ONLY_CAUSE):
            await sequencer.store_attestation(attest(head, central_bank, net.keys[central_bank]))

    logged = problems(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert READ_ONLY_CAUSE in logged[0].getMessage()
    assert logged[0].exc_info is None

    store._db.execute("PRAGMA query_only = OFF")
    await sequencer.store_attestation(attest(head, "PBOC", net.keys["PBOC"]))
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert f"after {len(net.central_banks)} failures" in recovered[0]
    assert len(problems(caplog)) == 1


async def test_work_whose_caller_has_gone_is_dropped_not_settled(
    sequencer: Sequencer, net: Network
) -> None:
    """Not yet sequenced when its caller gave up (deadline passed, call cancelled): not settled."""
    store = sequencer.engine.store
    loop = asyncio.get_running_loop()
    late = pay(net, "ICBC", "CCB", 11)
    cancelled = pay(net, "ICBC", "CCB", 12)
    waited = pay(net, "ICBC", "CCB", 13)

    late_result = sequencer.enqueue(late, deadline=loop.time() - 0.001)
    sequencer.enqueue(cancelled).cancel()  # as a cancelled call's handler task does
    on_time = sequencer.enqueue(waited, deadline=loop.time() + 60)

    assert isinstance(await on_time, Receipt)
    dropped = await late_result
    assert isinstance(dropped, Refused)
    assert dropped.reason.retryable
    assert sequencer.dropped == 2
    for envelope in (late, cancelled):
        body = envelope.body
        assert store.receipt(body.sender, body.instruction_id) is None, "settled after all"
        again = await sequencer.submit(envelope)  # resubmitted: settles now, once
        assert isinstance(again, Receipt)
        assert not again.duplicate


async def test_each_committed_block_is_handed_over_with_its_outbox_row(
    sequencer: Sequencer, net: Network
) -> None:
    """`on_outbox` gets every committed block's outbox row id and events, in commit order, the
    events being the stored row's payload one by one; a block whose commit failed is not
    handed over."""
    handed: list[OutboxRow | None] = []
    sequencer.on_outbox = handed.append
    store = sequencer.engine.store
    paid = list(
        await asyncio.gather(*(sequencer.submit(pay(net, "ICBC", "CCB", n)) for n in (1, 2)))
    )
    fill_disk(store)
    while True:
        before = len(handed)
        result = await sequencer.submit(pay(net, "ICBC", "CCB", 3))
        if not isinstance(result, Receipt):
            break
        paid.append(result)  # the room left in the capped file's pages
        assert len(paid) < 500, "the capped file never filled up"
    assert isinstance(result, Refused)
    assert len(handed) == before  # the block whose commit failed was not handed over
    free_disk(store)
    later = await sequencer.submit(pay(net, "ICBC", "CCB", 4))
    assert all(isinstance(r, Receipt) for r in [*paid, later])
    assert len(handed) == before + 1
    rows = [row for row in handed if row is not None]
    assert len(rows) == len(handed) >= 2
    stored = dict(store.outbox_after(rows[0].row_id - 1, 100))
    assert [row.row_id for row in rows] == sorted(stored)
    for row in rows:
        assert stored[row.row_id] == b"[" + b",".join(n[2] for n in row.notices) + b"]"
        for seq, parties, encoded in row.notices:
            assert json.loads(encoded)["seq"] == seq
            assert json.loads(encoded)["parties"] == parties
    seqs = [seq for row in rows for seq, _, _ in row.notices]
    assert seqs == sorted(seqs)
    assert {r.seq for r in [*paid, later] if isinstance(r, Receipt)} <= set(seqs)


async def test_a_batch_failing_after_its_commit_sends_the_publisher_to_the_store(
    sequencer: Sequencer, net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails after its block may have been committed (here, confirming it in
    memory raises) hands `on_outbox` None: the publisher then reads the outbox from its cursor
    instead of missing that block's row."""
    handed: list[OutboxRow | None] = []
    sequencer.on_outbox = handed.append
    engine = sequencer.engine
    finish = engine.finish

    def failing_finish(*args: object) -> object:
        monkeypatch.setattr(engine, "finish", finish)  # once
        raise RuntimeError("confirming the batch failed")

    monkeypatch.setattr(engine, "finish", failing_finish)
    payment = pay(net, "ICBC", "CCB", 1)
    failed_id = payment.body.instruction_id
    failed = await sequencer.submit(payment)
    assert isinstance(failed, Refused)
    assert handed == [None]
    rows = engine.store.outbox_after(0, 100)
    assert json.loads(rows[-1][1])[-1]["instruction_id"] == failed_id  # committed all the same
