"""A central bank's replica attests only blocks whose times never go backwards, and whose
endorsements verify from their batch roots.

Blocks are built by hand from a bridge-side ledger that, like a misbehaving sequencer, is
handed whatever time it is told: the acceptance of a PvP backdated before its `settle_by`,
sealed after a block that had passed it, must not be attested.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Envelope, Millis, Outcome, Pay
from bridge.errors import LogIntegrityError, Reason, Refused
from bridge.log.blocks import SealedBlock, attestation_valid, seal
from bridge.log.merkle import merkle_root
from bridge.signing import endorse_legs, sign_as_party
from participants.central_bank.replica import Replica
from tests.factories import (
    SIGNED_AT,
    T0,
    Network,
    accept_pvp,
    fund,
    make_ledger,
    network,
    pay,
    pvp_proposal,
    sign,
)

SETTLE_BY = T0 + 10_000


class Chain:
    """A bridge-side ledger and the blocks it sealed, at times chosen by the test."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.ledger: Ledger = make_ledger(net)
        self.height = 0
        self.head_hash = net.genesis.hash()

    def block(self, envelopes: list[Envelope], *, applied: Millis, sealed: Millis) -> SealedBlock:
        for envelope in envelopes:
            self.ledger.apply(envelope, applied)
        batch = self.ledger.take_batch()
        self.height += 1
        block = seal(self.height, self.head_hash, batch.entries, sealed)
        self.head_hash = block.header.hash()
        return block


def replica_of(net: Network) -> Replica:
    return Replica(
        net.genesis,
        central_bank="PBOC",
        signer=net.keys["PBOC"],
        verifier=FastVerifier(),
        check=SignatureCheck.ENDORSEMENTS,
    )


def attest(replica: Replica, block: SealedBlock) -> None:
    replica.apply_block(block.header, list(block.entry_bytes))
    attestation = replica.attest_head()
    assert attestation is not None
    assert attestation_valid(attestation, replica.signer.public_key, FastVerifier())


def held_pvp_chain() -> tuple[Chain, Replica, list[SealedBlock], Envelope]:
    """Blocks 1-3 (attested): funds, a PvP held until SETTLE_BY, a payment after SETTLE_BY."""
    net = network()
    chain = Chain(net)
    fund(chain.ledger, net, "ICBC", 1_000_000)
    fund(chain.ledger, net, "BOCHK", 1_000_000)
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1_000, 1_100, settle_by=SETTLE_BY)
    blocks = [
        chain.block([], applied=T0, sealed=T0),
        chain.block([sign(net, proposal)], applied=T0 + 1_000, sealed=T0 + 1_000),
        chain.block([pay(net, "ICBC", "CCB", 5)], applied=T0 + 20_000, sealed=T0 + 20_000),
    ]
    replica = replica_of(net)
    for block in blocks:
        attest(replica, block)
    return chain, replica, blocks, accept_pvp(net, proposal)


async def test_backdated_acceptance_past_settle_by_is_not_attested(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A block sealed before the previous block (an acceptance backdated before settle_by)
    is refused, logged at ERROR once however often it is offered, and changes nothing."""
    chain, replica, _, acceptance = held_pvp_chain()
    backdated = chain.block([acceptance], applied=T0 + 5_000, sealed=T0 + 5_000)
    before = (replica.height, replica.head_hash, dict(replica.ledger.balances))
    caplog.set_level(logging.ERROR, logger="participants.central_bank.replica")
    for _ in range(3):
        with pytest.raises(LogIntegrityError) as caught:
            replica.apply_block(backdated.header, list(backdated.entry_bytes))
        assert "time goes backwards" in caught.value.message
    assert (replica.height, replica.head_hash, dict(replica.ledger.balances)) == before
    assert replica.ledger.pvps[("ICBC", acceptance.body.pvp_id)].status is Outcome.HELD  # type: ignore[attr-defined]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].height == 4  # type: ignore[attr-defined]


async def test_entry_backdated_inside_a_later_block_is_not_attested() -> None:
    """A block sealed on time holding an entry applied before the previous block is refused."""
    chain, replica, _, acceptance = held_pvp_chain()
    block = chain.block([acceptance], applied=T0 + 5_000, sealed=T0 + 30_000)
    with pytest.raises(LogIntegrityError, match="time goes backwards"):
        replica.apply_block(block.header, list(block.entry_bytes))
    assert replica.height == 3


async def test_entry_after_its_block_time_is_not_attested() -> None:
    """An entry applied after its block was sealed is refused."""
    chain, replica, _, _ = held_pvp_chain()
    block = chain.block([pay(chain.net, "ICBC", "CCB", 5)], applied=T0 + 40_000, sealed=T0 + 30_000)
    with pytest.raises(LogIntegrityError, match="time goes backwards"):
        replica.apply_block(block.header, list(block.entry_bytes))
    assert replica.height == 3


async def test_time_standing_still_or_moving_forward_is_attested() -> None:
    """Blocks at the same time as the previous one, then later, are attested."""
    chain, replica, _, _ = held_pvp_chain()
    same = chain.block([pay(chain.net, "ICBC", "CCB", 1)], applied=T0 + 20_000, sealed=T0 + 20_000)
    attest(replica, same)
    later = chain.block([pay(chain.net, "ICBC", "CCB", 1)], applied=T0 + 21_000, sealed=T0 + 25_000)
    attest(replica, later)
    assert replica.height == 5
    assert merkle_root(list(later.entry_bytes)) == later.header.merkle_root


class CountingVerifier(FastVerifier):
    """OpenSSL verification that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        return super().verify(public_key, message, signature)


def payments_under_one_root(net: Network, count: int, tag: str) -> list[Envelope]:
    """Payments by ICBC whose legs PBOC endorsed together, with one signature over their root."""
    signed = [
        sign_as_party(
            Envelope.of(
                Pay(f"{tag}-{i}", "ICBC", T0 + 3_600_000, "CCB", "CNY", 5, "", signed_at=SIGNED_AT)
            ),
            "ICBC",
            net.keys["ICBC"],
        )
        for i in range(count)
    ]
    endorsements = endorse_legs([(e, "ICBC") for e in signed], "PBOC", net.keys["PBOC"])
    return [e.with_signature(s) for e, s in zip(signed, endorsements, strict=True)]


async def test_entries_under_one_endorsement_root_are_verified_once_and_attested() -> None:
    """A block of eight entries endorsed under one batch root: the replica checks the root's
    signature once, each entry's path, and attests the block."""
    net = network()
    chain = Chain(net)
    fund(chain.ledger, net, "ICBC", 1_000)
    verifier = CountingVerifier()
    replica = Replica(
        net.genesis,
        central_bank="PBOC",
        signer=net.keys["PBOC"],
        verifier=verifier,
        check=SignatureCheck.ENDORSEMENTS,
    )
    attest(replica, chain.block([], applied=T0, sealed=T0))
    calls = verifier.calls
    block = chain.block(payments_under_one_root(net, 8, "root"), applied=T0, sealed=T0)
    attest(replica, block)
    assert replica.height == 2
    assert verifier.calls - calls == 1


async def test_an_entry_with_the_path_of_another_batch_is_not_attested() -> None:
    """An endorsement carrying the place of its leg in another batch does not verify: the
    replica refuses the block (BAD_SIGNATURE) and attests nothing new."""
    net = network()
    chain = Chain(net)
    chain.ledger.check = SignatureCheck.NONE  # a sequencer that checks nothing
    fund(chain.ledger, net, "ICBC", 1_000)
    replica = replica_of(net)
    attest(replica, chain.block([], applied=T0, sealed=T0))
    envelopes = payments_under_one_root(net, 4, "moved")
    other = payments_under_one_root(net, 2, "moved")[1].endorsement("ICBC")
    moved = envelopes[1].endorsement("ICBC")
    assert other is not None
    assert moved is not None
    forged = Envelope(
        envelopes[1].body,
        (envelopes[1].signatures[0], replace(moved, size=2, path=other.path)),
        envelopes[1].body_bytes,
    )
    block = chain.block([envelopes[0], forged], applied=T0, sealed=T0)
    with pytest.raises(Refused) as caught:
        replica.apply_block(block.header, list(block.entry_bytes))
    assert caught.value.reason is Reason.BAD_SIGNATURE
    assert replica.height == 1


async def test_a_changed_body_under_an_already_verified_root_is_not_attested() -> None:
    """Two legs of a batch replayed (the root's signature verified and its verdict kept),
    then a third leg of the same batch whose body was changed after endorsing (canonical
    bytes, the block's Merkle root rebuilt over them): its path leads to another root, the
    replica refuses the block (BAD_SIGNATURE) and attests nothing new."""
    net = network()
    chain = Chain(net)
    chain.ledger.check = SignatureCheck.NONE  # a sequencer that checks nothing
    fund(chain.ledger, net, "ICBC", 1_000)
    replica = replica_of(net)
    attest(replica, chain.block([], applied=T0, sealed=T0))
    envelopes = payments_under_one_root(net, 4, "changed")
    attest(replica, chain.block(envelopes[:2], applied=T0, sealed=T0))
    body = envelopes[2].body
    assert isinstance(body, Pay)
    changed = replace(body, amount=body.amount + 1)
    forged = Envelope(changed, envelopes[2].signatures, changed.canonical_bytes())
    block = chain.block([forged], applied=T0, sealed=T0)
    with pytest.raises(Refused) as caught:
        replica.apply_block(block.header, list(block.entry_bytes))
    assert caught.value.reason is Reason.BAD_SIGNATURE
    assert replica.height == 2


async def test_waiters_wake_on_the_next_block_and_a_cancelled_one_is_dropped() -> None:
    """Tasks waiting beyond the head wake when the next block is replayed (not before); a
    waiter cancelled meanwhile is forgotten, not kept until the next block."""
    net = network()
    chain = Chain(net)
    replica = replica_of(net)
    fund(chain.ledger, net, "ICBC", 1_000)
    attest(replica, chain.block([], applied=T0, sealed=T0))
    waiting = [asyncio.create_task(replica.wait_beyond(1)) for _ in range(2)]
    gone = asyncio.create_task(replica.wait_beyond(1))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert len(replica._waiters) == 2
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in waiting)
    attest(replica, chain.block([pay(net, "ICBC", "CCB", 1)], applied=T0, sealed=T0))
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=5)
    assert replica._waiters == []
    await asyncio.wait_for(replica.wait_beyond(1), timeout=5)  # already beyond: no wait


async def test_an_entry_is_indexed_once_for_each_of_its_parties() -> None:
    """A payment is in the history of its payer and its payee (one value shared by both)."""
    net = network()
    chain = Chain(net)
    replica = replica_of(net)
    fund(chain.ledger, net, "ICBC", 1_000)
    attest(replica, chain.block([], applied=T0, sealed=T0))
    block = chain.block([pay(net, "ICBC", "CCB", 5)], applied=T0, sealed=T0)
    attest(replica, block)
    seq = block.header.first_seq
    (payer,) = list(replica.entries_of("ICBC", seq, 10))
    (payee,) = list(replica.entries_of("CCB", seq, 10))
    assert payer == payee
    assert (payer.seq, payer.height, payer.data) == (seq, 2, block.entry_bytes[0])
    assert list(replica.entries_of("BOCHK", seq, 10)) == []
