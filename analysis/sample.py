"""Sample settlement logs: a six-member mBridge-shaped network trading along the corridor.

`generate` drives the real `SettlementEngine` and `SqliteStore` with real P-256 keys: central
banks admit and fund their banks, banks pay each other with trade references, trade FX both
ways (dual-signed PvP and propose/accept PvP, some rejected, cancelled or left to expire), and
every block is attested by the central banks. Signatures are real, so the result verifies
offline; the engine itself runs with `SignatureCheck.NONE` to generate quickly.

Rates, trade sizes and liquidity come from `bridge.reference_rates`, shared with the demo and
the load tests; the mid rates drift slowly during a run.

Every instruction is signed a little before the block that settles it: a lognormal delay
around its signer's jurisdiction's median (`SIGNING_DELAY_MS`), plus the hand-over between the
two banks of a dual-signed PvP, so settlement latency (`time - signed_at`) varies by corridor
and kind as it would on a real network.

Keys are derived from the seed, so `sample_keys(seed)` recovers them (tests forge with them).
Refused instructions are recorded by the settlement engine in the store's `refusals` table, as
a bridge node records them (`SampleOptions.refusals=False` leaves that table empty).

Run `python -m analysis.sample --entries 1000000 --out log.sqlite` to make a big one.
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import PrivateKey
from bridge.domain import (
    CENTRAL_BANK_KINDS,
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    CurrencyCode,
    DualPvp,
    Envelope,
    Genesis,
    GenesisBank,
    Instruction,
    Issue,
    Millis,
    Outcome,
    ParticipantId,
    Pay,
    ProposePvp,
    Receipt,
    Redeem,
    RejectPvp,
    SetPolicy,
)
from bridge.errors import Refused
from bridge.log.blocks import BlockHeader, attest
from bridge.rates import counter_amount, implied_rate
from bridge.reference_rates import LIQUIDITY_CNY, UNITS_PER_CNY, quote, trade_value_cny
from bridge.settlement import SettlementEngine
from bridge.signing import endorse, sign_as_party, signed
from bridge.store.sqlite import SqliteStore

# (central bank, jurisdiction, currency, minor-unit exponent): mBridge members plus MAS
CENTRAL_BANKS: tuple[tuple[ParticipantId, str, CurrencyCode, int], ...] = (
    ("PBOC", "CN", "CNY", 2),
    ("HKMA", "HK", "HKD", 2),
    ("BOT", "TH", "THB", 2),
    ("CBUAE", "AE", "AED", 2),
    ("SAMA", "SA", "SAR", 2),
    ("MAS", "SG", "SGD", 2),
)
# (commercial bank, home central bank)
BANKS: tuple[tuple[ParticipantId, ParticipantId], ...] = (
    ("ICBC", "PBOC"),
    ("BOC", "PBOC"),
    ("CCB", "PBOC"),
    ("BOCHK", "HKMA"),
    ("HSBCHK", "HKMA"),
    ("KBANK", "BOT"),
    ("BBL", "BOT"),
    ("ENBD", "CBUAE"),
    ("FAB", "CBUAE"),
    ("SNB", "SAMA"),
    ("ALRAJHI", "SAMA"),
    ("DBS", "MAS"),
    ("OCBC", "MAS"),
)
QUORUM = 4
CHAIN_ID = "mbridge-sample"
START_MS: Millis = 1_748_826_000_000  # 2025-06-02 01:00 UTC: 09:00 in Chongqing and Singapore
VALID_FOR_MS = 60_000
FUNDING_CNY = LIQUIDITY_CNY  # each bank starts with this much (CNY-equivalent, major units)
REFUSAL_PERIOD_MS = 60_000
# Median delay (ms) from a bank of each jurisdiction signing an instruction to the block that
# settles it, as the sample draws it: network to its central bank's node and on to the bridge,
# endorsement, queueing. The bridge sits near Hong Kong; the Gulf is furthest away.
SIGNING_DELAY_MS: Mapping[str, float] = {
    "HK": 18.0,
    "CN": 32.0,
    "SG": 45.0,
    "TH": 58.0,
    "AE": 96.0,
    "SA": 112.0,
}
PORTS = ("SGSIN", "MYPKG", "THLCH", "VNSGN", "IDJKT", "AEJEA", "SAJED", "HKHKG")


@dataclass(frozen=True, slots=True)
class SampleOptions:
    """What to generate. `rate` is the mean logical throughput, in entries per second."""

    entries: int = 2_000
    block_size: int = 200
    rate: float = 2_000.0
    seed: int = 7
    start_ms: Millis = START_MS
    non_final_tail: int = 1
    refusals: bool = True


@dataclass(frozen=True, slots=True)
class SampleLog:
    """A generated log: where it is, its genesis, the keys that signed it, what it holds."""

    path: Path
    genesis: Genesis
    keys: Mapping[ParticipantId, PrivateKey]
    entries: int
    blocks: int
    refused: int


def sample_keys(seed: int) -> dict[ParticipantId, PrivateKey]:
    """Deterministic P-256 keys of every sample participant, derived from `seed`."""
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    keys = {}
    for who in (*(cb for cb, *_ in CENTRAL_BANKS), *(bank for bank, _ in BANKS)):
        digest = sha256(f"cbdc-bridge/sample/{seed}/{who}".encode()).digest()
        scalar = int.from_bytes(digest, "big") % (order - 1) + 1
        keys[who] = PrivateKey(ec.derive_private_key(scalar, ec.SECP256R1()))
    return keys


def sample_genesis(keys: Mapping[ParticipantId, PrivateKey]) -> Genesis:
    banks = tuple(
        GenesisBank(cb, jurisdiction, keys[cb].public_key, currency, exponent)
        for cb, jurisdiction, currency, exponent in CENTRAL_BANKS
    )
    return Genesis(chain_id=CHAIN_ID, central_banks=banks, quorum=QUORUM)


def generate(path: Path, options: SampleOptions = SampleOptions()) -> SampleLog:
    """Write a new sample log of about `options.entries` entries to the SQLite file `path`."""
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    keys = sample_keys(options.seed)
    genesis = sample_genesis(keys)
    store = SqliteStore(path, synchronous="OFF")
    try:
        engine = SettlementEngine.open(store, genesis, verifier=None, check=SignatureCheck.NONE)
        run = _Run(engine, keys, options)
        run.go()
    finally:
        store.close()
    if not options.refusals:
        db = sqlite3.connect(path)
        try:
            db.execute("DELETE FROM refusals")
            db.commit()
        finally:
            db.close()
    return SampleLog(
        path, genesis, keys, engine.ledger.next_seq - 1, engine.height, sum(run.refusals.values())
    )


@dataclass(slots=True)
class _FollowUp:
    due: Millis
    action: str  # accept, reject, cancel
    proposal: ProposePvp


class _Run:
    """One generation: the workload, the engine loop, attestations and refusal counts."""

    def __init__(
        self,
        engine: SettlementEngine,
        keys: Mapping[ParticipantId, PrivateKey],
        options: SampleOptions,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.options = options
        self.rng = random.Random(options.seed)
        self.now = options.start_ms
        self.home = {cb: cb for cb, *_ in CENTRAL_BANKS} | dict(BANKS)
        self.currency_of_cb = {cb: code for cb, _, code, _ in CENTRAL_BANKS}
        self.banks = [bank for bank, _ in BANKS]
        self.mid = dict(UNITS_PER_CNY)
        self.follow_ups: list[_FollowUp] = []
        self.refusals: Counter[tuple[int, str, str]] = Counter()
        self.unattested: deque[BlockHeader] = deque()
        self.ids = 0
        # signing delays come from their own generator, so the workload stays the same
        self.delays = random.Random(f"{options.seed}/signing")
        self.jurisdiction = {who: j for cb, j, *_ in CENTRAL_BANKS for who in (cb, *_banks(cb))}

    @property
    def ledger(self) -> Ledger:
        return self.engine.ledger

    def go(self) -> None:
        self._settle(self._founding())
        self._settle(self._funding())
        batches = 0
        while self.ledger.next_seq - 1 < self.options.entries:
            remaining = self.options.entries - (self.ledger.next_seq - 1)
            self._advance_clock()
            self._settle(self._batch(min(self.options.block_size, remaining)))
            batches += 1
            if batches % 50 == 0:
                self._forget_closed()
        self._attest_tail()

    # ------------------------------------------------------------------ clock and engine

    def _advance_clock(self) -> None:
        """Mean throughput `rate`, with a slow swell so charts show load changing."""
        elapsed_s = (self.now - self.options.start_ms) / 1000
        swell = 1.0 + 0.5 * math.sin(elapsed_s / 45.0)
        interval = self.options.block_size / (self.options.rate * swell) * 1000
        self.now += max(1, int(interval * self.rng.uniform(0.7, 1.3)))
        for code in self.mid:
            if code != "CNY":
                self.mid[code] *= math.exp(self.rng.gauss(0.0, 0.0004))

    def _settle(self, envelopes: list[Envelope]) -> None:
        settled = self.engine.settle(envelopes, self.now)
        period = self.now - self.now % REFUSAL_PERIOD_MS
        for envelope, result in zip(envelopes, settled.results, strict=True):
            if isinstance(result, Refused):
                self.refusals[(period, result.reason.value, envelope.body.KIND)] += 1
            else:
                self._schedule(envelope.body, result)
        if settled.block is not None:
            self.unattested.append(settled.block.header)
            while len(self.unattested) > self.options.non_final_tail:
                self._attest(self.unattested.popleft(), final=True)

    def _attest(self, header: BlockHeader, *, final: bool) -> None:
        central_banks = [cb for cb, *_ in CENTRAL_BANKS]
        if not final:
            central_banks = central_banks[: QUORUM - 1]
        elif self.rng.random() < 0.05:
            central_banks.remove(self.rng.choice(central_banks))  # one bank attests late
        for cb in central_banks:
            self.engine.store.add_attestation(attest(header, cb, self.keys[cb]))

    def _attest_tail(self) -> None:
        while self.unattested:
            self._attest(self.unattested.popleft(), final=False)

    def _forget_closed(self) -> None:
        """Drop receipts and closed PvPs from memory: this generator never resubmits an id."""
        ledger = self.ledger
        ledger.load_table("receipts", ())
        held = [(k, s) for k, s in ledger.pvps.items() if s.status is Outcome.HELD]
        ledger.load_table("pvps", held)

    # ------------------------------------------------------------------ signing

    def _signed_at(self, signer: ParticipantId, *, not_after: Millis | None = None) -> Millis:
        """When `signer` signed an instruction settling in the next block: now, less a
        lognormal delay around its jurisdiction's median (central banks sign at their node,
        in a third of it)."""
        median = SIGNING_DELAY_MS[self.jurisdiction[signer]]
        if signer == self.home[signer]:
            median /= 3
        delay = median * self.delays.lognormvariate(0.0, 0.45) + self.delays.uniform(0.0, 8.0)
        signed_at = self.now - max(1, int(delay))
        return signed_at if not_after is None else min(signed_at, not_after)

    def _drafted_at(self, submitter: ParticipantId, counterparty: ParticipantId) -> Millis:
        """When a dual-signed PvP was drafted and first signed, by the counterparty: its own
        delay, the hand-over of the signed draft, then the submitter's delay to the block."""
        counterparty_delay = self.now - self._signed_at(counterparty)
        submitter_delay = self.now - self._signed_at(submitter)
        handover = int(self.delays.uniform(80.0, 900.0))
        return self.now - counterparty_delay - handover - submitter_delay

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}-{self.ids:09d}"

    def _sign(self, body: Instruction) -> Envelope:
        if body.KIND in CENTRAL_BANK_KINDS:
            return signed(body, self.keys[body.sender])
        envelope = Envelope.of(body)
        for party in body.parties():
            envelope = sign_as_party(envelope, party, self.keys[party])
        for party in body.parties():
            home = self.home[party]
            envelope = endorse(envelope, party, home, self.keys[home])
        return envelope

    # ------------------------------------------------------------------ workload

    def _founding(self) -> list[Envelope]:
        until = self.now + VALID_FOR_MS
        out = [
            self._sign(
                AdmitBank(
                    self._id("admit"),
                    cb,
                    until,
                    bank,
                    self.keys[bank].public_key,
                    signed_at=self._signed_at(cb),
                )
            )
            for bank, cb in BANKS
        ]
        # per-transfer limits: 50 million major units of each currency
        for cb, _, _, exponent in CENTRAL_BANKS:
            limit = 50_000_000 * 10**exponent
            policy = SetPolicy(
                self._id("policy"), cb, until, limit, 0, (), signed_at=self._signed_at(cb)
            )
            out.append(self._sign(policy))
        return out

    def _funding(self) -> list[Envelope]:
        until = self.now + VALID_FOR_MS
        out = []
        for bank, cb in BANKS:
            code = self.currency_of_cb[cb]
            amount = self._minor(FUNDING_CNY * self.mid[code])
            issue = Issue(
                self._id("issue"), cb, until, bank, code, amount, signed_at=self._signed_at(cb)
            )
            out.append(self._sign(issue))
        return out

    def _batch(self, size: int) -> list[Envelope]:
        due = [f for f in self.follow_ups if f.due <= self.now]
        self.follow_ups = [f for f in self.follow_ups if f.due > self.now]
        out = [self._follow_up(f) for f in due[:size]]
        self.follow_ups.extend(due[size:])
        makers: tuple[tuple[float, Callable[[], Envelope | None]], ...] = (
            (0.41, self._pay),
            (0.64, self._dual_pvp),
            (0.88, self._propose_pvp),
            (0.90, self._redeem),
            (0.985, self._top_up),
            (1.0, self._doomed),
        )
        while len(out) < size:
            roll = self.rng.random()
            maker = next(make for threshold, make in makers if roll < threshold)
            envelope = maker()
            if envelope is not None:
                out.append(envelope)
        return out

    def _minor(self, major: float) -> int:
        return max(1, int(major * 100))

    def _trade_value_cny(self) -> float:
        return trade_value_cny(self.rng)

    def _reference(self) -> str:
        n = self.ids
        port = self.rng.choice(PORTS)
        return f"INV-2025-{n % 1_000_000:06d} B/L CNCKG-{port}-{n % 97_331:05d}"

    def _available(self, bank: ParticipantId, code: CurrencyCode) -> int:
        return self.ledger.balance(bank, code)[0]

    def _pay(self) -> Envelope | None:
        payer, payee = self.rng.sample(self.banks, 2)
        held = [code for (owner, code), (a, _) in self.ledger.balances.items() if owner == payer]
        code = self.currency_of_cb[self.home[payer]]
        if held and self.rng.random() < 0.35:
            code = self.rng.choice(held)
        amount = self._minor(self._trade_value_cny() * self.mid[code])
        if amount > self._available(payer, code) // 20:
            return None
        until = self.now + VALID_FOR_MS
        body = Pay(
            self._id("pay"),
            payer,
            until,
            payee,
            code,
            amount,
            self._reference(),
            signed_at=self._signed_at(payer),
        )
        return self._sign(body)

    def _fx_terms(
        self,
    ) -> tuple[ParticipantId, ParticipantId, CurrencyCode, int, CurrencyCode, int, str]:
        a, b = self.rng.sample(self.banks, 2)
        pay_code = self.currency_of_cb[self.home[a]]
        receive_code = self.currency_of_cb[self.home[b]]
        if pay_code == receive_code:
            receive_code = self.rng.choice([c for c in self.mid if c != pay_code])
        value = self._trade_value_cny()
        pay_amount = self._minor(value * self.mid[pay_code])
        # stated from the proposer's side: receive per pay, in major units (both exponents 2),
        # quoted to 6 places around the reference rate; the receive amount follows from it
        rate = quote(self.mid[receive_code] / self.mid[pay_code], self.rng)
        receive_amount = counter_amount(pay_amount, 2, rate, 2)
        if receive_amount < 1:
            receive_amount = 1
            rate = implied_rate(pay_amount, 2, receive_amount, 2)
        return a, b, pay_code, pay_amount, receive_code, receive_amount, rate

    def _dual_pvp(self) -> Envelope | None:
        a, b, pay_code, pay_amount, receive_code, receive_amount, rate = self._fx_terms()
        if self._available(b, receive_code) < receive_amount * 20:
            return None
        until = self.now + VALID_FOR_MS
        body = DualPvp(
            self._id("fx"),
            a,
            until,
            b,
            pay_code,
            pay_amount,
            receive_code,
            receive_amount,
            rate,
            signed_at=self._drafted_at(a, b),
        )
        return self._sign(body)

    def _propose_pvp(self) -> Envelope | None:
        a, b, pay_code, pay_amount, receive_code, receive_amount, rate = self._fx_terms()
        if self._available(a, pay_code) < pay_amount * 20:
            return None
        window = self.rng.randint(1_500, 6_000)
        until = self.now + VALID_FOR_MS
        body = ProposePvp(
            self._id("pvp"),
            a,
            until,
            b,
            pay_code,
            pay_amount,
            receive_code,
            receive_amount,
            rate,
            self.now + window,
            self._reference(),
            signed_at=self._signed_at(a),
        )
        return self._sign(body)

    def _schedule(self, body: Instruction, receipt: Receipt) -> None:
        if not isinstance(body, ProposePvp) or receipt.outcome is not Outcome.HELD:
            return
        roll = self.rng.random()
        window = body.settle_by - self.now
        if roll < 0.80:
            action, delay = "accept", self.rng.uniform(0.02, 0.8) * window
        elif roll < 0.87:
            action, delay = "reject", self.rng.uniform(0.05, 0.5) * window
        elif roll < 0.92:
            action, delay = "cancel", self.rng.uniform(0.05, 0.5) * window
        else:
            return  # left to expire
        self.follow_ups.append(_FollowUp(self.now + max(1, int(delay)), action, body))

    def _follow_up(self, follow_up: _FollowUp) -> Envelope:
        proposal = follow_up.proposal
        until = self.now + VALID_FOR_MS
        if follow_up.action == "accept":
            accept = AcceptPvp(
                self._id("acc"),
                proposal.counterparty,
                until,
                proposal.sender,
                proposal.instruction_id,
                proposal.terms_hash(),
                signed_at=self._signed_at(proposal.counterparty),
            )
            return self._sign(accept)
        if follow_up.action == "reject":
            reject = RejectPvp(
                self._id("rej"),
                proposal.counterparty,
                until,
                proposal.sender,
                proposal.instruction_id,
                signed_at=self._signed_at(proposal.counterparty),
            )
            return self._sign(reject)
        cancel = CancelPvp(
            self._id("cxl"),
            proposal.sender,
            until,
            proposal.instruction_id,
            signed_at=self._signed_at(proposal.sender),
        )
        return self._sign(cancel)

    def _redeem(self) -> Envelope | None:
        bank = self.rng.choice(self.banks)
        code = self.currency_of_cb[self.home[bank]]
        amount = self._minor(self._trade_value_cny() * self.mid[code])
        if amount > self._available(bank, code) // 50:
            return None
        until = self.now + VALID_FOR_MS
        signed_at = self._signed_at(bank)
        return self._sign(Redeem(self._id("rdm"), bank, until, code, amount, signed_at=signed_at))

    def _top_up(self) -> Envelope | None:
        bank = self.rng.choice(self.banks)
        cb = self.home[bank]
        code = self.currency_of_cb[cb]
        target = self._minor(FUNDING_CNY * self.mid[code])
        if self._available(bank, code) > target // 2:
            return None
        amount = target - self._available(bank, code)
        until = self.now + VALID_FOR_MS
        signed_at = self._signed_at(cb)
        return self._sign(
            Issue(self._id("issue"), cb, until, bank, code, amount, signed_at=signed_at)
        )

    def _doomed(self) -> Envelope:
        """An instruction the bridge refuses: overdrawn, over the limit, or late."""
        payer, payee = self.rng.sample(self.banks, 2)
        code = self.currency_of_cb[self.home[payer]]
        roll = self.rng.random()
        until = self.now + VALID_FOR_MS
        if roll < 0.4:  # a foreign currency it holds too little of
            code = self.rng.choice([c for c in self.mid if c != code])
            amount = self._available(payer, code) + self._minor(1_000_000 * self.mid[code])
        elif roll < 0.7:  # over the issuer's per-transfer limit
            amount = 50_000_001 * 100
        else:  # arrives after its validity
            amount, until = 100, self.now - 1
        body = Pay(
            self._id("pay"),
            payer,
            until,
            payee,
            code,
            amount,
            self._reference(),
            signed_at=self._signed_at(payer, not_after=until),
        )
        return self._sign(body)


def _banks(central_bank: ParticipantId) -> tuple[ParticipantId, ...]:
    return tuple(bank for bank, cb in BANKS if cb == central_bank)


def main(argv: list[str] | None = None) -> None:
    defaults = SampleOptions()
    parser = argparse.ArgumentParser(description="Generate a sample settlement log (SQLite).")
    parser.add_argument("--entries", type=int, default=defaults.entries)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    options = SampleOptions(
        entries=args.entries, block_size=args.block_size, rate=args.rate, seed=args.seed
    )
    log = generate(args.out, options)
    print(f"{log.path}: {log.entries} entries in {log.blocks} blocks, {log.refused} refused")


if __name__ == "__main__":
    main()
