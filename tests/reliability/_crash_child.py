"""A settlement process to be killed: settles signed batches forever, reporting each ack.

Run as `python -m tests.reliability._crash_child DIRECTORY ROUND [ID ...]` from the repository
root. It opens (or founds) the ledger in DIRECTORY/ledger.sqlite through `SettlementEngine`,
prints `ready`, re-submits the listed already-acknowledged ids (each must come back as a
duplicate), accepts any PvP a previous run left held, then settles batches of fresh
instructions (dual-signed PvPs, payments, proposals accepted one batch later) until killed.

Every line is written and flushed only after `settle` returned, so a printed
`ack SENDER ID SEQ` is a promise that the entry is on disk. Instruction bodies are a pure
function of their id, so any id can be rebuilt and re-sent with the same body.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge.crypto import FastVerifier
from bridge.domain import DAY_MS, Envelope, Millis, Outcome, ProposePvp, Receipt
from bridge.errors import Refused
from bridge.settlement import SettlementEngine
from bridge.store.sqlite import SqliteStore
from tests.factories import (
    BANKS,
    T0,
    Network,
    accept_pvp,
    admit_bank,
    dual_pvp,
    issue,
    pay,
    pvp_proposal,
    sign,
)
from tests.reliability._network import load_network

VALID_UNTIL: Millis = T0 + 10 * DAY_MS
SETTLE_BY: Millis = T0 + 5 * DAY_MS
FUNDS = 10**12
MAX_BATCH = 30
MAX_INSTRUCTIONS = 200_000  # a safety stop; the parent kills the child long before
STORE_FILE = "ledger.sqlite"
ACCEPT_PREFIX = "acc-"


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- bodies from ids


def setup_envelopes(net: Network) -> list[Envelope]:
    """Admit and fund every bank; fixed ids, so a restart re-sends them as duplicates."""
    out = []
    for bank, cb in BANKS:
        out.append(
            admit_bank(net, cb, bank, instruction_id=f"admit-{bank}", valid_until=VALID_UNTIL)
        )
        out.append(
            issue(net, cb, bank, FUNDS, instruction_id=f"fund-{bank}", valid_until=VALID_UNTIL)
        )
    return out


def proposal_for(net: Network, instruction_id: str) -> ProposePvp:
    rng = random.Random(instruction_id)
    proposer, counterparty = cross_currency_pair(net, rng)
    return pvp_proposal(
        net,
        proposer,
        counterparty,
        rng.randrange(100, 100_000),
        rng.randrange(100, 100_000),
        settle_by=SETTLE_BY,
        reference=f"held {instruction_id}",
        instruction_id=instruction_id,
        valid_until=VALID_UNTIL,
    )


def cross_currency_pair(net: Network, rng: random.Random) -> tuple[str, str]:
    banks = [bank for bank, _ in BANKS]
    while True:
        a, b = rng.sample(banks, 2)
        if net.currency_of[a] != net.currency_of[b]:
            return a, b


def envelope_for(net: Network, instruction_id: str) -> Envelope:
    """The one body this id stands for (signatures are fresh, the body is identical)."""
    if instruction_id.startswith(ACCEPT_PREFIX):
        proposal = proposal_for(net, instruction_id.removeprefix(ACCEPT_PREFIX))
        return accept_pvp(net, proposal, instruction_id=instruction_id, valid_until=VALID_UNTIL)
    if instruction_id.startswith(("admit-", "fund-")):
        return next(e for e in setup_envelopes(net) if e.body.instruction_id == instruction_id)
    number = int(instruction_id.rsplit("-", 1)[1])
    rng = random.Random(instruction_id)
    kind = number % 5
    if kind in (0, 1):
        sender, counterparty = cross_currency_pair(net, rng)
        return dual_pvp(
            net,
            sender,
            counterparty,
            rng.randrange(100, 100_000),
            rng.randrange(100, 100_000),
            reference=f"corridor {instruction_id}",
            instruction_id=instruction_id,
            valid_until=VALID_UNTIL,
        )
    if kind in (2, 3):
        payer, payee = rng.sample([bank for bank, _ in BANKS], 2)
        return pay(
            net,
            payer,
            payee,
            rng.randrange(1, 50_000),
            reference=f"invoice {instruction_id}",
            instruction_id=instruction_id,
            valid_until=VALID_UNTIL,
        )
    return sign(net, proposal_for(net, instruction_id))


# ---------------------------------------------------------------------------- the loop


class Runner:
    def __init__(self, engine: SettlementEngine) -> None:
        self.engine = engine
        head = engine.store.head()
        self.now: Millis = T0 if head is None else max(T0, head.time + 1)

    def settle(self, envelopes: Sequence[Envelope], *, expect_duplicates: bool = False) -> None:
        """Settle one batch, then report every result on stdout."""
        results = self.engine.settle(envelopes, self.now).results
        self.now += 1
        for envelope, result in zip(envelopes, results, strict=True):
            body = envelope.body
            if isinstance(result, Refused):
                emit(f"refused {body.sender} {body.instruction_id} {result}")
            elif isinstance(result, Receipt):
                tag = "dup" if result.duplicate else "ack"
                if expect_duplicates and not result.duplicate:
                    tag = "fresh"
                emit(f"{tag} {result.sender} {result.instruction_id} {result.seq}")


def held_proposals(engine: SettlementEngine) -> list[ProposePvp]:
    return sorted(
        (s.proposal for s in engine.ledger.pvps.values() if s.status is Outcome.HELD),
        key=lambda p: p.instruction_id,
    )


def run(directory: Path, round_number: int, resubmit: Sequence[str]) -> None:
    net = load_network(directory)
    store = SqliteStore(directory / STORE_FILE)
    engine = SettlementEngine.open(store, net.genesis, verifier=FastVerifier())
    runner = Runner(engine)
    rng = random.Random(round_number)
    emit("ready")
    runner.settle(setup_envelopes(net))
    if resubmit:
        runner.settle([envelope_for(net, i) for i in resubmit], expect_duplicates=True)
    leftovers = held_proposals(engine)
    if leftovers:
        runner.settle([envelope_for(net, ACCEPT_PREFIX + p.instruction_id) for p in leftovers])
    proposed: list[str] = []
    number = 0
    while number < MAX_INSTRUCTIONS:
        batch = [envelope_for(net, ACCEPT_PREFIX + i) for i in proposed]
        proposed = []
        for _ in range(rng.randrange(1, MAX_BATCH + 1)):
            instruction_id = f"r{round_number}-{number}"
            number += 1
            batch.append(envelope_for(net, instruction_id))
            if isinstance(batch[-1].body, ProposePvp):
                proposed.append(instruction_id)
        runner.settle(batch)
    store.close()


def main(argv: Sequence[str]) -> None:
    directory, round_number, *resubmit = argv
    run(Path(directory), int(round_number), resubmit)


if __name__ == "__main__":
    main(sys.argv[1:])
