"""Who a settlement entry concerns: the parties its event names and a replica indexes it by."""

from __future__ import annotations

from bridge.core.ledger import Ledger, expiry_envelope
from bridge.domain import Entry, Envelope
from bridge.events import entry_parties, settlement_event
from tests.factories import (
    T0,
    accept_pvp,
    cancel_pvp,
    dual_pvp,
    fund,
    issue,
    make_ledger,
    network,
    pay,
    pvp_proposal,
    redeem,
    reject_pvp,
    sign,
)


def parties(ledger: Ledger, envelope: Envelope, now: int = T0) -> list[str]:
    """Apply `envelope`; the parties of its entry, checked equal to its event's."""
    receipt = ledger.apply(envelope, now)
    entry = Entry(receipt.seq, now, envelope, receipt.outcome)
    found = entry_parties(entry, ledger)
    assert settlement_event(entry, ledger, 1)["parties"] == found
    return found


def test_every_kind_names_its_sender_then_the_other_banks_it_moves_money_for() -> None:
    """Payments, issuance and both PvP forms name the other party; an acceptance,
    rejection, cancellation or expiry names both banks of its PvP; a redemption its bank."""
    net = network()
    ledger = make_ledger(net)
    fund(ledger, net, "ICBC", 1_000_000)
    fund(ledger, net, "BOCHK", 1_000_000)
    assert parties(ledger, issue(net, "PBOC", "ICBC", 5)) == ["PBOC", "ICBC"]
    assert parties(ledger, pay(net, "ICBC", "CCB", 5)) == ["ICBC", "CCB"]
    assert parties(ledger, redeem(net, "ICBC", 5)) == ["ICBC"]
    assert parties(ledger, dual_pvp(net, "ICBC", "BOCHK", 1_000, 1_085)) == ["ICBC", "BOCHK"]
    for close in (accept_pvp, reject_pvp, cancel_pvp):
        proposal = pvp_proposal(net, "ICBC", "BOCHK", 1_000, 1_085)
        assert parties(ledger, sign(net, proposal)) == ["ICBC", "BOCHK"]
        closing = close(net, proposal)
        found = parties(ledger, closing)
        assert found[0] == closing.body.sender
        assert set(found) == {"ICBC", "BOCHK"}
    proposal = pvp_proposal(net, "ICBC", "BOCHK", 1_000, 1_085, settle_by=T0 + 10)
    parties(ledger, sign(net, proposal))
    expiry = expiry_envelope("ICBC", proposal.instruction_id, T0 + 10)
    assert parties(ledger, expiry, T0 + 10) == ["bridge", "ICBC", "BOCHK"]
