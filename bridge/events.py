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
    if isinstance(body, DualPvp):
        legs = _pvp_legs(body)
    elif isinstance(body, Pay):
        legs = [[body.sender, body.payee, body.currency, body.amount]]
    elif isinstance(body, AcceptPvp):
        legs = _pvp_legs(ledger.pvps[(body.proposer, body.pvp_id)].proposal)
    elif isinstance(body, Issue):
        legs = [[body.sender, body.to, body.currency, body.amount]]
    elif isinstance(body, Redeem):
        legs = [[body.sender, "", body.currency, body.amount]]
    return {
        "seq": entry.seq,
        "height": height,
        "time": entry.time,
        "kind": body.KIND,
        "outcome": entry.outcome.value,
        "sender": body.sender,
        "instruction_id": body.instruction_id,
        "pvp_id": getattr(body, "pvp_id", ""),
        "parties": entry_parties(entry, ledger),
        "legs": legs,
        "reference": getattr(body, "reference", ""),
    }


def entry_parties(entry: Entry, ledger: Ledger) -> list[str]:
    """Who an entry concerns (its event's `parties`): the sender, the other party of a
    payment, PvP or issuance, and both banks of the PvP it acts on (read from `ledger`, which
    must still hold that PvP)."""
    body = entry.envelope.body
    parties = [body.sender]
    if isinstance(body, DualPvp | ProposePvp):
        parties.append(body.counterparty)
    elif isinstance(body, Pay):
        parties.append(body.payee)
    elif isinstance(body, Issue):
        parties.append(body.to)
    pvp_id = getattr(body, "pvp_id", "")
    if pvp_id:
        state = ledger.pvps.get((getattr(body, "proposer", body.sender), pvp_id))
        if state is not None:
            for party in (state.proposal.sender, state.proposal.counterparty):
                if party not in parties:
                    parties.append(party)
    return parties


def _pvp_legs(pvp: DualPvp | ProposePvp) -> list[list[Any]]:
    """`[list(vars_of(leg)) for leg in pvp.legs()]` without building the `Leg` values."""
    return [
        [pvp.sender, pvp.counterparty, pvp.pay_currency, pvp.pay_amount],
        [pvp.counterparty, pvp.sender, pvp.receive_currency, pvp.receive_amount],
    ]


def vars_of(leg: Leg) -> tuple[str, str, str, int]:
    return (leg.payer, leg.payee, leg.currency, leg.amount)


# one event of a committed block as the MQTT publisher takes it in memory: its seq, its
# parties and its own JSON object (the outbox payload's element, byte for byte)
Notice = tuple[int, list[str], bytes]
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encode_events(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()


def encode_notices(events: list[dict[str, Any]]) -> tuple[bytes, list[Notice]]:
    """A block's outbox payload (`encode_events`, the same bytes) and each event as a
    `Notice`: every event is encoded once, for the store and the publisher both."""
    encode = _COMPACT.encode
    notices = [(event["seq"], event["parties"], encode(event).encode()) for event in events]
    return b"[" + b",".join([n[2] for n in notices]) + b"]", notices
