"""Signed heads: `verify --head` fails a log that ends before, or differs at, a signed block."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import replace

import pytest

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.log.blocks import BlockHeader, attest
from bridge.log.head import HeadError, SignedHead
from bridge.log.source import SqliteSource
from bridge.log.verify import VerifyReport, verify_log

OPTIONS = SampleOptions(entries=80, block_size=16, rate=100.0, seed=5)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("head-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def header_at(sample: SampleLog, height: int) -> BlockHeader:
    with sqlite3.connect(sample.path) as db:
        row = db.execute(
            "SELECT height, prev_hash, merkle_root, time, first_seq, entry_count FROM blocks "
            "WHERE height=?",
            (height,),
        ).fetchone()
    return BlockHeader(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


def signed_head(sample: SampleLog, header: BlockHeader, bank: str = "MAS") -> SignedHead:
    genesis = sample.genesis
    attestation = attest(header, bank, sample.keys[bank])
    return SignedHead(genesis.chain_id, genesis.hash(), header, attestation)


def verify(sample: SampleLog, head: SignedHead) -> VerifyReport:
    with SqliteSource(sample.path) as source:
        return verify_log(source, head=head)


def test_log_reaching_the_signed_head_verifies(sample: SampleLog) -> None:
    """The log holding exactly the signed block (and more after it) passes."""
    for height in (sample.blocks, sample.blocks - 2):
        report = verify(sample, signed_head(sample, header_at(sample, height)))
        assert report.ok, report.failures


def test_log_ending_before_the_signed_head_is_cut_short(sample: SampleLog) -> None:
    """A central bank signed a later block than the log holds: verification fails."""
    last = header_at(sample, sample.blocks)
    later = BlockHeader(last.height + 3, last.hash(), last.merkle_root, last.time + 5, 0, 1)
    report = verify(sample, signed_head(sample, later))
    assert not report.ok
    failure = report.failures[0]
    assert failure.where == "end of the log"
    assert f"ends at block {sample.blocks}" in failure.message
    assert f"MAS signed block {sample.blocks + 3}" in failure.message
    assert "cut short" in failure.message


def test_log_differing_at_the_signed_height_is_rewritten(sample: SampleLog) -> None:
    """A signed block other than the log's block at that height fails there."""
    header = header_at(sample, 3)
    other = replace(header, time=header.time + 1)
    report = verify(sample, signed_head(sample, other))
    assert not report.ok
    assert report.failures[0].where.startswith("block 3")
    assert "rewritten" in report.failures[0].message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda h: replace(h, chain_id="another-chain"), "chain 'another-chain'"),
        (lambda h: replace(h, genesis_hash=bytes(32)), "not this log's"),
        (
            lambda h: replace(h, attestation=replace(h.attestation, central_bank="ZZ")),
            "ZZ is not a central bank",
        ),
        (
            lambda h: replace(h, attestation=replace(h.attestation, signature=bytes(64))),
            "does not verify with MAS",
        ),
        (
            lambda h: replace(h, header=replace(h.header, entry_count=99)),
            "not the hash of the block header",
        ),
    ],
)
def test_a_head_that_does_not_verify_fails(
    sample: SampleLog, change: object, expected: str
) -> None:
    """A forged, foreign or mislabelled head is a failure, not a pass."""
    head = change(signed_head(sample, header_at(sample, 2)))  # type: ignore[operator]
    report = verify(sample, head)
    assert not report.ok
    assert report.failures[0].where == "signed head"
    assert expected in report.failures[0].message


def test_head_round_trips_through_json(sample: SampleLog) -> None:
    """The head file written by `log head` reads back to the same head."""
    head = signed_head(sample, header_at(sample, 4))
    assert SignedHead.from_json(json.loads(json.dumps(head.to_json()))) == head
    with pytest.raises(HeadError):
        SignedHead.from_json({"type": "cbdc-bridge/inclusion-proof", "version": 1})
    with pytest.raises(HeadError):
        SignedHead.from_json({**head.to_json(), "block": {"height": 4}})
