"""Central bank replicas replay with the bodies their nodes decoded at the edge, and agree
with the bridge.

Each node keeps the envelopes it decoded from its banks and from the dual PvPs it endorsed for
a peer; its replica takes those bodies instead of decoding them again, still proving each entry
is exactly its canonical bytes. Through real nodes: every node's metrics show entries replayed
that way, every central bank attests the bridge's final height, and every node's balances of
its banks are the bridge's.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp
from bridge.rates import implied_rate
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    LiveNetwork,
    new_id,
    now_ms,
    start_network,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from participants.launcher import Network

ROUNDS = 3  # payments and dual PvPs per pair of banks


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A running network of four central banks whose nodes serve their metrics."""
    network = start_network(tmp_path_factory.mktemp("known-bodies"), metrics=True)
    try:
        yield network
    finally:
        network.stop()


def node_metric(network: Network, central_bank: str, name: str) -> float:
    """One gauge of a central bank node's Prometheus endpoint, as an operator scrapes it."""
    port = network.central_banks[central_bank].metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith(f"cbdc_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"cbdc_{name} is not among {central_bank}'s metrics")


def dual(live: LiveNetwork, sender: str, counterparty: str) -> DualPvp:
    """A dual PvP of `sender`'s currency against `counterparty`'s, signed now."""
    pay_currency, receive_currency = live.currency_of(sender), live.currency_of(counterparty)
    return DualPvp(
        new_id("dual"),
        sender,
        now_ms() + VALID_FOR_MS,
        counterparty,
        pay_currency,
        1_000,
        receive_currency,
        1_100,
        implied_rate(1_000, 2, 1_100, 2),
        "known bodies",
        signed_at=now_ms(),
    )


def test_replicas_replaying_known_bodies_agree_with_the_bridge(live: LiveNetwork) -> None:
    """Payments and cross-border dual PvPs through every node: each replica replays entries
    with bodies decoded at its edge, attests the bridge's final height, and reports its banks'
    balances as the bridge holds them."""
    network = live.network
    first = {
        cb: next(b for b in live.banks if live.home_of(b) == cb) for cb in live.central_bank_ids
    }
    for bank in first.values():
        assert live.issue(bank, 1_000_000).receipt.outcome == types.OUTCOME_ISSUED
    homes = live.central_bank_ids
    pairs = list(zip(homes, [*homes[1:], homes[0]], strict=True))
    for _ in range(ROUNDS):
        for proposer_home, counterparty_home in pairs:
            sender, counterparty = first[proposer_home], first[counterparty_home]
            paid = live.pay(sender, counterparty, 10)
            assert paid.receipt.outcome == types.OUTCOME_SETTLED
            status = live.node(proposer_home).SubmitDualPvp(
                live.dual_signed(dual(live, sender, counterparty)), timeout=RPC_TIMEOUT
            )
            assert status.receipt.outcome == types.OUTCOME_SETTLED
    height = live.wait_all_final()
    live.wait_attested_by_all(height)
    for central_bank in live.central_bank_ids:
        # every node decoded a payment, a dual PvP it proposed and one it endorsed, per round
        wait_for(
            lambda cb=central_bank: node_metric(network, cb, "replay_known_bodies") >= 3 * ROUNDS,
            timeout=30,
            what=f"{central_bank}'s replica to replay the bodies its node decoded",
        )
        for bank in live.banks:
            if live.home_of(bank) != central_bank:
                continue
            reply = live.node(central_bank).GetBalances(
                live.query("GetBalances", cb_pb.BalancesQuery(), bank), timeout=RPC_TIMEOUT
            )
            for account in reply.accounts:
                assert (account.available, account.held) == live.balance(bank, account.currency)
    live.assert_conserved()
