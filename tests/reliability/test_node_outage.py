"""A central bank node goes down: what needs it waits and expires cleanly; back, it catches up.

HKMA's node is killed (SIGKILL). ICBC proposes a CNY/HKD PvP to HSBCHK with a settlement
deadline three seconds away; HSBCHK cannot answer through its own node, so the bridge expires the
PvP and releases ICBC's hold. Blocks keep being sealed and keep becoming final without HKMA
(the network's quorum is 3 of 4). When HKMA's node returns, its replica replays the chain from
its checkpoint (or from height 1 if it wrote none yet) and attests every block it missed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import FastVerifier
from bridge.domain import AcceptPvp, ExpirePvp, Outcome, ProposePvp
from bridge.log.blocks import attestation_valid
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    network_on_each_store,
    new_id,
    now_ms,
    refusal_of,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from participants.launcher import Network
    from tests.conftest import LiveNetwork


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network with its one bridge process on each store."""
    yield from network_on_each_store(request, tmp_path_factory)


SETTLE_WITHIN_MS = 3_000


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    live.issue("ICBC", 5_000_000)
    live.issue("HSBCHK", 5_000_000)


def pvp_status(live: LiveNetwork, proposal: ProposePvp) -> types.PvpStatus:
    status: types.PvpStatus = live.bridge.GetPvp(
        bridge_pb.GetPvpRequest(proposer=proposal.sender, pvp_id=proposal.instruction_id),
        timeout=RPC_TIMEOUT,
    )
    return status


def test_pvp_with_the_counterpartys_node_down_expires_and_the_node_catches_up(
    live: LiveNetwork,
) -> None:
    """HKMA down: the PvP is held, expires and releases its hold; back, HKMA attests."""
    final_before = live.wait_all_final()
    hkma = live.network.central_banks["HKMA"]
    hkma.kill()
    try:
        before = live.snapshot()
        proposal = ProposePvp(
            new_id("pvp"),
            "ICBC",
            now_ms() + VALID_FOR_MS,
            "HSBCHK",
            "CNY",
            300_000,
            "HKD",
            325_500,
            "1.085",
            now_ms() + SETTLE_WITHIN_MS,
            "Land-Sea Corridor shipment 7",
            signed_at=now_ms(),
        )
        held = live.node("PBOC").ProposePvp(live.signed(proposal), timeout=RPC_TIMEOUT)
        assert held.receipt.outcome == types.OUTCOME_HELD
        during = live.snapshot()
        assert during.held("ICBC", "CNY") == before.held("ICBC", "CNY") + 300_000
        assert during.available("ICBC", "CNY") == before.available("ICBC", "CNY") - 300_000

        accept = AcceptPvp(
            new_id("accept"),
            "HSBCHK",
            now_ms() + VALID_FOR_MS,
            "ICBC",
            proposal.instruction_id,
            proposal.terms_hash(),
            signed_at=now_ms(),
        )
        error = refusal_of(lambda: live.node("HKMA").AcceptPvp(live.signed(accept), timeout=5.0))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        wait_for(
            lambda: pvp_status(live, proposal).status == types.OUTCOME_EXPIRED,
            timeout=SETTLE_WITHIN_MS / 1000 + 10,
            what="the PvP to expire",
        )
        after = live.snapshot()
        assert after.accounts[("ICBC", "CNY")] == before.accounts[("ICBC", "CNY")]
        assert after.accounts.get(("HSBCHK", "HKD")) == before.accounts.get(("HSBCHK", "HKD"))
        live.assert_conserved(after)

        closed_seq = pvp_status(live, proposal).closed_seq
        stream = live.bridge.WatchEntries(
            bridge_pb.WatchEntriesRequest(from_seq=closed_seq), timeout=RPC_TIMEOUT
        )
        try:
            expiry = wire.entry_from_proto(next(stream).entry)
        finally:
            stream.cancel()
        assert expiry.outcome is Outcome.EXPIRED
        assert isinstance(expiry.envelope.body, ExpirePvp)
        assert expiry.envelope.body.pvp_id == proposal.instruction_id
        assert expiry.envelope.body.sender == "bridge"
        assert expiry.time >= proposal.settle_by

        stalled = live.finality()
        assert stalled.sealed_height > final_before
        wait_for(
            lambda: live.finality().final_height >= stalled.sealed_height,
            timeout=30,
            what="finality to go on with three of four central banks",
        )
        missed = range(final_before + 1, stalled.sealed_height + 1)
        for height in missed:
            attesters = {a.central_bank for a in live.finality(height).attestations}
            assert "HKMA" not in attesters
    finally:
        live.network.restart_central_bank("HKMA")
        live.reset_channels()

    wait_for(
        lambda: all(
            "HKMA" in {a.central_bank for a in live.finality(height).attestations}
            for height in missed
        ),
        timeout=30,
        what="HKMA to attest every block it missed",
    )
    hkma_key = live.config.genesis().central_banks[1]
    assert hkma_key.id == "HKMA"
    verifier = FastVerifier()
    for height in missed:
        reply = live.finality(height)
        assert reply.final
        (attestation,) = [a for a in reply.attestations if a.central_bank == "HKMA"]
        assert attestation.height >= height  # a later height covers the missed block
        assert attestation_valid(
            wire.attestation_from_proto(attestation), hkma_key.public_key, verifier
        )

    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=held.receipt.seq), "HSBCHK")
    page = live.node("HKMA").GetHistory(query, timeout=RPC_TIMEOUT)
    assert [e.entry.seq for e in page.entries][:1] == [held.receipt.seq]
    assert closed_seq in {e.entry.seq for e in page.entries}
    late = AcceptPvp(
        new_id("accept"),
        "HSBCHK",
        now_ms() + VALID_FOR_MS,
        "ICBC",
        proposal.instruction_id,
        proposal.terms_hash(),
        signed_at=now_ms(),
    )
    live.assert_refused_unchanged(
        lambda: live.node("HKMA").AcceptPvp(live.signed(late), timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_other_corridors_keep_settling_while_one_node_is_down(live: LiveNetwork) -> None:
    """With BOT's node down, CNY and HKD payments settle and become final without BOT."""
    live.wait_all_final()
    live.network.central_banks["BOT"].kill()
    try:
        paid = live.pay("ICBC", "HSBCHK", 1_000)
        assert paid.receipt.outcome == types.OUTCOME_SETTLED
        status = wait_for(
            lambda: (
                live.bridge.GetReceipt(
                    bridge_pb.GetReceiptRequest(
                        sender="ICBC", instruction_id=paid.receipt.instruction_id
                    ),
                    timeout=RPC_TIMEOUT,
                ).final
            ),
            timeout=30,
            what="the payment to become final with BOT down",
        )
        assert status
        attesters = {
            a.central_bank for a in live.finality(live.finality().final_height).attestations
        }
        assert "BOT" not in attesters
    finally:
        live.network.restart_central_bank("BOT")
        live.reset_channels()
    live.wait_all_final(timeout=30)
