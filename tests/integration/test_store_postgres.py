"""What only the PostgreSQL store does: leadership, the fencing token, the database's own
refusal of a forked or gapped chain, and versioned migrations."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bridge.crypto import FastVerifier
from bridge.errors import Reason, Refused, StoreError
from bridge.log.blocks import seal
from bridge.settlement import SettlementEngine
from bridge.store.postgres import (
    MIGRATIONS,
    Leadership,
    NotLeader,
    PostgresStore,
    migrate,
    public_url,
)
from tests.factories import BANKS, T0, Network, admit_bank, issue, network, pay

FUNDS = 1_000_000


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
    epoch = leadership.try_acquire()
    assert epoch is not None
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
    assert second.try_acquire() == epoch + 1


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


def test_the_store_description_hides_the_password() -> None:
    """Messages name the database without its password."""
    url = "postgresql://bridge:s3cret@db.example:5433/ledger"
    assert public_url(url) == "postgresql://bridge@db.example:5433/ledger"


def test_an_unreachable_database_is_a_store_error() -> None:
    """A URL nobody answers at fails with StoreError naming the database, not a hang."""
    with pytest.raises(StoreError, match=r"cannot connect to postgresql://bridge@127\.0\.0\.1:1/x"):
        PostgresStore("postgresql://bridge:pw@127.0.0.1:1/x")
