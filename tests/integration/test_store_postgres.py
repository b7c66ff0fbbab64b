"""What only the PostgreSQL store does: leadership, the fencing token, the database's own
refusal of a forked or gapped chain, and versioned migrations."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bridge.crypto import FastVerifier
from bridge.errors import Reason, Refused, StoreError
from bridge.log.blocks import SealedBlock, seal
from bridge.node.leadership import POLL_SECONDS, SequencerOptions, lead_when_possible
from bridge.node.sequencer import Sequencer
from bridge.settlement import SettlementEngine
from bridge.store.postgres import (
    LEASE_SECONDS,
    MIGRATIONS,
    Leadership,
    NotLeader,
    PostgresStore,
    migrate,
    public_url,
)
from tests.conftest import wait_for
from tests.factories import BANKS, T0, Network, admit_bank, issue, network, pay

FUNDS = 1_000_000
SILENT_FOR = 30.0  # generous bound on taking over from a silent leader (correctness, not speed)


@pytest.fixture
def net() -> Network:
    return network()


@pytest.fixture
def opened() -> Iterator[list[PostgresStore | Leadership]]:
    """Stores and leaderships a test opens, closed at the end."""
    things: list[PostgresStore | Leadership] = []
    yield things
    for thing in things:
        if isinstance(thing, Leadership):
            thing.release()
        else:
            thing.close()


def leader_engine(
    url: str, net: Network, opened: list[PostgresStore | Leadership]
) -> tuple[SettlementEngine, Leadership]:
    """Take leadership, then open (or found) the ledger as the leader does."""
    leadership = Leadership(url)
    opened.append(leadership)
    # a lock just released is free once the closed session's backend has exited
    epoch = wait_for(leadership.try_acquire, timeout=SILENT_FOR, what="leadership")
    store = PostgresStore(url)
    opened.append(store)
    store.epoch = epoch
    return SettlementEngine.open(store, net.genesis, verifier=FastVerifier()), leadership


def funded(engine: SettlementEngine, net: Network) -> None:
    for batch in (
        [admit_bank(net, cb, bank) for bank, cb in BANKS],
        [issue(net, cb, bank, FUNDS) for bank, cb in BANKS],
    ):
        assert all(not isinstance(r, Refused) for r in engine.settle(batch, T0).results)


def test_only_one_process_leads_and_the_next_gets_a_higher_epoch(
    postgres_url: str, opened: list[PostgresStore | Leadership]
) -> None:
    """While one session holds the lock nobody else leads; once it is gone the next one does,
    with the epoch incremented."""
    migrate(postgres_url)
    first, second = Leadership(postgres_url), Leadership(postgres_url)
    opened += [first, second]
    epoch = first.try_acquire()
    assert epoch == 1
    assert second.try_acquire() is None
    assert first.held()
    first.release()
    assert not first.held()
    # the server frees the lock as the closed session's backend exits, a moment later
    taken = wait_for(second.try_acquire, timeout=SILENT_FOR, what="the lock to be free")
    assert taken == epoch + 1


def test_a_deposed_leader_cannot_commit(
    postgres_url: str, net: Network, opened: list[PostgresStore | Leadership]
) -> None:
    """A leader whose epoch is over has its block refused whole and acknowledges nothing."""
    old, old_leadership = leader_engine(postgres_url, net, opened)
    funded(old, net)
    old_leadership.release()  # its session is gone (a pause, a partition): another takes over
    new, _ = leader_engine(postgres_url, net, opened)
    assert new.height == old.height

    before = (old.store.count("blocks"), old.store.count("entries"), old.store.accounts())
    settled = old.settle([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    (result,) = settled.results
    assert isinstance(result, Refused)
    assert result.reason is Reason.OUTCOME_UNKNOWN
    assert "another bridge process leads" in result.message
    assert (old.store.count("blocks"), old.store.count("entries"), old.store.accounts()) == before

    settled = new.settle([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert settled.block is not None
    assert settled.block.header.height == before[0] + 1


def test_a_silent_leader_loses_the_lock_to_the_next_process(
    postgres_url: str, opened: list[PostgresStore | Leadership]
) -> None:
    """A leader whose lock session falls silent (the process paused, its machine gone without
    closing the socket) loses the lock; the next process leads with a higher epoch."""
    migrate(postgres_url)
    silent, next_one = Leadership(postgres_url), Leadership(postgres_url)
    opened += [silent, next_one]
    epoch = silent.try_acquire()
    assert epoch is not None
    assert next_one.try_acquire() is None
    taken = wait_for(next_one.try_acquire, timeout=SILENT_FOR, what="the next process to lead")
    assert taken == epoch + 1
    assert not silent.held()


@pytest.mark.parametrize("where", ["between statements", "inside the COPY of its entries"])
def test_a_leader_paused_inside_a_block_commit_does_not_block_the_next_one(
    where: str,
    postgres_url: str,
    net: Network,
    opened: list[PostgresStore | Leadership],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader that stops mid-commit (its transaction open, the fencing row locked; idle
    between two statements, or with the server waiting for the rest of a COPY) does not hold
    the next leader up: that one takes over, the paused commit fails whole when it goes on,
    and the new leader continues at the next height."""
    old, _ = leader_engine(postgres_url, net, opened)
    funded(old, net)
    height = old.height
    store = old.store
    assert isinstance(store, PostgresStore)
    inside, go_on = threading.Event(), threading.Event()
    if where == "between statements":
        write_changes = store._write_changes

        def paused(cursor: psycopg.Cursor[tuple[Any, ...]], batch: Any) -> None:
            inside.set()
            go_on.wait(SILENT_FOR * 2)
            write_changes(cursor, batch)

        monkeypatch.setattr(store, "_write_changes", paused)
    else:
        write_row = psycopg.Copy.write_row

        def paused_row(copy: psycopg.Copy, row: Any) -> None:
            if not inside.is_set():
                inside.set()
                go_on.wait(SILENT_FOR * 2)
            write_row(copy, row)

        monkeypatch.setattr(psycopg.Copy, "write_row", paused_row)
    prepared = old.prepare([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert prepared.block is not None
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            store.commit_block(prepared.block, prepared.batch, [prepared.events])  # type: ignore[arg-type]
        except BaseException as exc:  # the failure is what the test expects
            failures.append(exc)

    committing = threading.Thread(target=commit, daemon=True)
    committing.start()
    assert inside.wait(10)

    next_one = Leadership(postgres_url)
    opened.append(next_one)
    taken: list[int] = []

    def take_over() -> None:
        deadline = threading.Event()
        while not deadline.wait(0.1):
            epoch = next_one.try_acquire()
            if epoch is not None:
                taken.append(epoch)
                return

    taking = threading.Thread(target=take_over, daemon=True)
    taking.start()
    taking.join(SILENT_FOR)
    go_on.set()
    committing.join(SILENT_FOR)
    assert taken, "the next process never led: the paused commit held the fencing row"
    assert not committing.is_alive()
    assert len(failures) == 1
    assert isinstance(failures[0], StoreError)
    assert store.failed

    new_store = PostgresStore(postgres_url)
    opened.append(new_store)
    new_store.epoch = taken[0]
    new = SettlementEngine.open(new_store, net.genesis, verifier=FastVerifier())
    assert new.height == height
    settled = new.settle([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert settled.block is not None
    assert settled.block.header.height == height + 1


async def test_a_leader_loading_a_ledger_for_longer_than_the_lease_keeps_the_lock(
    postgres_url: str, net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new leader whose ledger takes longer than the lease to load still holds the lock
    afterwards: it sequences with the epoch it took instead of stepping down to load again."""
    opening = SettlementEngine.open

    def slow_open(*args: Any, **kwargs: Any) -> SettlementEngine:
        time.sleep(LEASE_SECONDS + 2)
        return opening(*args, **kwargs)

    monkeypatch.setattr(SettlementEngine, "open", slow_open)
    store = PostgresStore(postgres_url)
    installed: list[Sequencer | None] = []

    def on_block(block: SealedBlock) -> None:
        pass

    leading = asyncio.create_task(
        lead_when_possible(
            url=postgres_url,
            store=store,
            genesis=net.genesis,
            options=SequencerOptions(max_batch=64, block_interval=0.01),
            install=installed.append,
            on_block=on_block,
        )
    )
    try:
        for _ in range(int(SILENT_FOR / 0.1)):
            if installed:
                break
            await asyncio.sleep(0.1)
        assert installed, "never led"
        await asyncio.sleep(POLL_SECONDS * 6)  # several liveness checks of the lock session
        assert len(installed) == 1, installed  # no step down (None) and no second load
        assert installed[0] is not None
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT epoch FROM leader").fetchone() == (1,)
    finally:
        leading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leading
        store.close()


def test_a_stale_epoch_commit_raises_not_leader(
    postgres_url: str, net: Network, opened: list[PostgresStore | Leadership]
) -> None:
    """The fencing check is in the store itself: commit_block with an old epoch raises."""
    engine, _ = leader_engine(postgres_url, net, opened)
    funded(engine, net)
    prepared = engine.prepare([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert prepared.block is not None
    store = engine.store
    assert isinstance(store, PostgresStore)
    store.epoch = (store.epoch or 0) - 1
    with pytest.raises(NotLeader):
        store.commit_block(prepared.block, prepared.batch, [prepared.events])
    assert store.failed


def test_the_database_refuses_a_gap_or_a_fork_in_the_chain(
    postgres_url: str, net: Network, opened: list[PostgresStore | Leadership]
) -> None:
    """A block that skips a height, or a second block at a height, is refused by the database."""
    engine, _ = leader_engine(postgres_url, net, opened)
    funded(engine, net)
    prepared = engine.prepare([pay(net, "ICBC", "CCB", 10)], T0 + 1)
    assert prepared.block is not None
    block = prepared.block
    gap = seal(block.header.height + 1, block.header.prev_hash, block.entries, T0 + 1)
    with pytest.raises(StoreError, match="foreign key"):
        engine.store.commit_block(gap, prepared.batch, [prepared.events])
    header = engine.store.header(engine.height)
    assert header is not None
    fork = seal(engine.height, header.prev_hash, block.entries, T0 + 1)
    with pytest.raises(StoreError, match="duplicate key"):
        engine.store.commit_block(fork, prepared.batch, [prepared.events])
    assert engine.store.head() == header


def test_migrations_apply_once_and_are_recorded(postgres_url: str) -> None:
    """Opening a database twice applies each migration once and records its version."""
    assert migrate(postgres_url) == MIGRATIONS[-1][0]
    assert migrate(postgres_url) == MIGRATIONS[-1][0]
    with psycopg.connect(postgres_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        (epoch,) = conn.execute("SELECT epoch FROM leader").fetchone() or (None,)
    assert versions == [v for v, _ in MIGRATIONS]
    assert epoch == 0


def test_a_database_at_an_older_version_gets_only_the_later_migrations(postgres_url: str) -> None:
    """A database a previous release set up (version 1, holding a ledger row) is brought to the
    current version by the later migrations alone; its rows are kept."""
    first_version, first_sql = MIGRATIONS[0]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(first_sql.encode())
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (first_version,))
        conn.execute("INSERT INTO meta VALUES ('genesis', '{}')")
    store = PostgresStore(postgres_url)
    store.close()
    with psycopg.connect(postgres_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        refusals = conn.execute("SELECT COUNT(*) FROM refusals").fetchone()
        kept = conn.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
    assert versions == [v for v, _ in MIGRATIONS]
    assert refusals == (0,)
    assert kept == ("{}",)


def test_the_store_description_hides_the_password() -> None:
    """Messages name the database without its password."""
    url = "postgresql://bridge:s3cret@db.example:5433/ledger"
    assert public_url(url) == "postgresql://bridge@db.example:5433/ledger"


def test_an_unreachable_database_is_a_store_error() -> None:
    """A URL nobody answers at fails with StoreError naming the database, not a hang."""
    with pytest.raises(StoreError, match=r"cannot connect to postgresql://bridge@127\.0\.0\.1:1/x"):
        PostgresStore("postgresql://bridge:pw@127.0.0.1:1/x")
