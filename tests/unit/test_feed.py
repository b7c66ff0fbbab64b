"""The bridge's final height: a quorum of central banks attested a height or a later one."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.log.blocks import attest
from bridge.node.feed import ChainFeed
from bridge.store.base import open_store

OPTIONS = SampleOptions(entries=60, block_size=10, rate=100.0, seed=11)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("feed-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def only_attestations_at(sample: SampleLog, tmp_path: Path, height: int) -> Path:
    """A copy of the sample log whose only attestations are those of `height`."""
    path = tmp_path / "log.sqlite"
    shutil.copyfile(sample.path, path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM attestations WHERE height<>?", (height,))
    return path


async def test_attestations_of_a_later_height_make_every_block_below_final(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Stored attestations of height h alone make heights 1..h final when the feed opens."""
    height = 3
    store = open_store(only_attestations_at(sample, tmp_path, height))
    try:
        feed = ChainFeed(store, sample.genesis.quorum)
        assert feed.height == sample.blocks
        assert feed.final_height == height
        assert len(store.covering_attestations(1)) >= sample.genesis.quorum
        assert {a.height for a in store.covering_attestations(1)} == {height}
    finally:
        store.close()


async def test_a_quorum_attesting_the_head_finalises_the_whole_chain(
    sample: SampleLog, tmp_path: Path
) -> None:
    """Attestations of the head, counted as they arrive, move the final height to the head."""
    store = open_store(only_attestations_at(sample, tmp_path, 2))
    try:
        feed = ChainFeed(store, sample.genesis.quorum)
        head = store.head()
        assert head is not None
        assert feed.final_height == 2
        banks = [cb.id for cb in sample.genesis.central_banks][: sample.genesis.quorum]
        for count, bank in enumerate(banks, start=1):
            feed.attested(attest(head, bank, sample.keys[bank]))
            assert feed.final_height == (head.height if count == len(banks) else 2)
    finally:
        store.close()
