"""Settlement notifications: what subscribers (MQTT, gRPC streams) learn about each entry."""

from __future__ import annotations

import json
from typing import Any

from bridge.core.ledger import Ledger
from bridge.domain import AcceptPvp, DualPvp, Entry, Issue, Leg, Pay, ProposePvp, Redeem


def settlement_event(entry: Entry, ledger: Ledger, height: int) -> dict[str, Any]:
    """One entry as a notification: who, what moved, and the outcome; `seq` de-duplicates."""
    body = entry.envelope.body
    legs: list[list[Any]] = []
    parties = [body.sender]
    if isinstance(body, Pay):
        legs = [[body.sender, body.payee, body.currency, body.amount]]
        parties.append(body.payee)
    elif isinstance(body, DualPvp):
        legs = [list(vars_of(leg)) for leg in body.legs()]
        parties.append(body.counterparty)
    elif isinstance(body, ProposePvp):
        parties.append(body.counterparty)
    elif isinstance(body, AcceptPvp):
        proposal = ledger.pvps[(body.proposer, body.pvp_id)].proposal
        legs = [list(vars_of(leg)) for leg in proposal.legs()]
    elif isinstance(body, Issue):
        legs = [[body.sender, body.to, body.currency, body.amount]]
        parties.append(body.to)
    elif isinstance(body, Redeem):
        legs = [[body.sender, "", body.currency, body.amount]]
    pvp_id = getattr(body, "pvp_id", "")
    if pvp_id:
        state = ledger.pvps.get((getattr(body, "proposer", body.sender), pvp_id))
        if state is not None:
            for party in (state.proposal.sender, state.proposal.counterparty):
                if party not in parties:
                    parties.append(party)
    return {
        "seq": entry.seq,
        "height": height,
        "time": entry.time,
        "kind": body.KIND,
        "outcome": entry.outcome.value,
        "sender": body.sender,
        "instruction_id": body.instruction_id,
        "pvp_id": getattr(body, "pvp_id", ""),
        "parties": parties,
        "legs": legs,
        "reference": getattr(body, "reference", ""),
    }


def vars_of(leg: Leg) -> tuple[str, str, str, int]:
    return (leg.payer, leg.payee, leg.currency, leg.amount)


def encode_events(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()
