"""Random sequences of valid and hostile instructions against the ledger and a plain model.

The model is written independently of the ledger: dictionaries of balances, holds, supply,
usage, freezes, suspensions, policies and PvPs, plus the refusal the ledger must give for each
command (in the ledger's documented check order). Every command is really signed with
`cryptography` keys and applied; then the invariants below are checked after every step:

- conservation per currency and no negative balance or hold;
- the ledger's state equals the model's (so a settled PvP moved both legs, an unsettled one
  moved neither, and holds equal the sum of open proposals);
- a refused command changed nothing (deep compare of every state table);
- every receipt has the next sequence number, and resubmitting a logged envelope returns the
  logged receipt as a duplicate and changes nothing;
- replaying the log from genesis reproduces the state (with full signature checks at the end
  of each run, after a canonical-bytes round trip of every entry).

Every other command is pre-verified first (`Ledger.preverify`, as the bridge's sequencer does
for each batch), in a batch with twins of it that share its body: the untampered original of a
tampered command, and copies with each party's own signature or endorsement corrupted. What
`apply` takes from the pre-verification (root verdicts, endorsement root messages) must give
exactly the refusal or outcome the model predicts, as working it out anew does: a verdict or
root message kept under too loose a key would hand one twin's to another.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bridge.core.ledger import Ledger, SignatureCheck, expiry_envelope, replay
from bridge.crypto import FastVerifier
from bridge.domain import (
    CENTRAL_BANK_KINDS,
    CLOCK_SKEW_MS,
    DAY_MS,
    INT64_MAX,
    MAX_SIGNED_AGE_MS,
    AcceptPvp,
    CancelPvp,
    DualPvp,
    Entry,
    Envelope,
    FreezeAccount,
    Instruction,
    Issue,
    Leg,
    Outcome,
    Pay,
    Policy,
    ProposePvp,
    Receipt,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
)
from bridge.errors import Reason, Refused
from bridge.signing import endorse_legs, signed
from tests.factories import (
    BANKS,
    CENTRAL_BANKS,
    T0,
    VALID_FOR,
    Snapshot,
    admit_bank,
    assert_unchanged,
    corrupt,
    corrupt_endorsement,
    corrupt_party_signature,
    network,
    new_id,
    sign,
    snapshot,
    without_signature,
)

NET = network()
CB_IDS = tuple(cb for cb, *_ in CENTRAL_BANKS)
BANK_IDS = tuple(bank for bank, _ in BANKS)
CURRENCIES = tuple(currency for _, _, currency, _ in CENTRAL_BANKS)
ISSUER = {currency: cb for cb, _, currency, _ in CENTRAL_BANKS}
GHOST = "GHOST"  # never admitted
UNKNOWN_CURRENCY = "SGD"  # well-formed, not on this bridge
START_FUNDS = 100_000

banks = st.sampled_from(BANK_IDS)
central_banks = st.sampled_from(CB_IDS)
# mostly banks, sometimes a central bank or a stranger
parties = st.sampled_from((*BANK_IDS, *BANK_IDS, *BANK_IDS, *CB_IDS, GHOST))
# the other side of a payment or PvP: another bank (an offset in BANK_IDS) most of the time,
# sometimes the sender itself (offset 0), a central bank or a stranger
partners = st.sampled_from([1, 2, 3, 4] * 4 + [0, "HKMA", GHOST])
# an honest command keeps its random choices but drops every self-inflicted defect (bad
# amounts, damaged signatures, staleness, odd counterparties), so refusals come from state
honesty = st.sampled_from([True, True, False])
# sometimes spend exactly the available balance, or one unit more than it
drains = st.sampled_from([None] * 6 + ["all", "all+1"])
# which PvP a command names: mostly a pending one
pvp_choices = st.tuples(st.sampled_from([True] * 3 + [False]), st.integers(0, 10_000))
# None: the home currency of the paying bank (the common case)
currencies = st.sampled_from((*[None] * 8, *CURRENCIES, UNKNOWN_CURRENCY))


def mostly(common: st.SearchStrategy[int], rare: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """`common` seven times in eight (sampled_from draws close to uniformly; one_of does not)."""
    return st.sampled_from([False] * 7 + [True]).flatmap(lambda odd: rare if odd else common)


hostile_amounts = st.sampled_from([0, -1, -(2**63), INT64_MAX, INT64_MAX + 1, 2**64])
amounts = mostly(st.integers(1, 3_000), hostile_amounts)
tampering = st.sampled_from(
    [*[""] * 12, "corrupt_endorsement", "corrupt_party", "wrong_endorser", "drop"]
)
stale = st.sampled_from([False] * 9 + [True])
# the rate a PvP states: mostly receive / pay, sometimes 1% off or upside down (hostile)
rate_kinds = st.sampled_from(["fair"] * 4 + ["skewed", "inverted"])
others = st.one_of(st.none(), st.none(), st.none(), banks)  # None: the rightful party
indexes = st.integers(0, 10_000)

Expected = Reason | Outcome | None


@dataclass
class PvpModel:
    proposal: ProposePvp
    status: Outcome
    day: int
    expired_at: int | None = None


@dataclass
class Model:
    """The bridge as plain data, updated only by commands the model expects to succeed."""

    balances: dict[tuple[str, str], tuple[int, int]]
    supply: dict[str, tuple[int, int]]
    usage: dict[tuple[str, str, int], int]
    frozen: set[tuple[str, str]]
    suspended: set[str]
    policies: dict[str, Policy]
    pvps: dict[tuple[str, str], PvpModel]

    @classmethod
    def empty(cls) -> Model:
        return cls({}, dict.fromkeys(CURRENCIES, (0, 0)), {}, set(), set(), {}, {})

    # ------------------------------------------------------------------ reading

    def balance(self, who: str, currency: str) -> tuple[int, int]:
        return self.balances.get((who, currency), (0, 0))

    def leg_refusal(self, leg: Leg, now: int, *, receiving_only: bool = False) -> Reason | None:
        """The refusal the ledger's leg checks must give, in their documented order."""
        if leg.currency not in ISSUER:
            return Reason.UNKNOWN_CURRENCY
        for who in (leg.payer, leg.payee):
            if who not in NET.home:
                return Reason.UNKNOWN_PARTICIPANT
            if who in CB_IDS:
                return Reason.NOT_A_BANK
            if who in self.suspended:
                return Reason.PARTICIPANT_SUSPENDED
        if any((who, leg.currency) in self.frozen for who in (leg.payer, leg.payee)):
            return Reason.ACCOUNT_FROZEN
        issuer = ISSUER[leg.currency]
        policy = self.policies.get(issuer, Policy())
        if policy.allowed_jurisdictions:
            for who in (leg.payer, leg.payee):
                where = NET.jurisdiction_of[who]
                if (
                    where != NET.jurisdiction_of[issuer]
                    and where not in policy.allowed_jurisdictions
                ):
                    return Reason.CORRIDOR_NOT_ALLOWED
        if not receiving_only:
            if policy.per_transfer_limit and leg.amount > policy.per_transfer_limit:
                return Reason.TRANSFER_LIMIT_EXCEEDED
            used = self.usage.get((leg.payer, leg.currency, now // DAY_MS), 0)
            if policy.per_day_limit and used + leg.amount > policy.per_day_limit:
                return Reason.DAILY_LIMIT_EXCEEDED
            if self.balance(leg.payer, leg.currency)[0] < leg.amount:
                return Reason.INSUFFICIENT_FUNDS
        if sum(self.balance(leg.payee, leg.currency)) + leg.amount > INT64_MAX:
            return Reason.BALANCE_OVERFLOW
        return None

    # ------------------------------------------------------------------ changing

    def add(self, who: str, currency: str, available: int = 0, held: int = 0) -> None:
        a, h = self.balance(who, currency)
        self.balances[(who, currency)] = (a + available, h + held)

    def count(self, payer: str, currency: str, day: int, amount: int) -> None:
        key = (payer, currency, day)
        total = self.usage.get(key, 0) + amount
        if total:
            self.usage[key] = total
        else:
            self.usage.pop(key, None)

    def move(self, leg: Leg, now: int) -> None:
        self.add(leg.payer, leg.currency, available=-leg.amount)
        self.add(leg.payee, leg.currency, available=leg.amount)
        self.count(leg.payer, leg.currency, now // DAY_MS, leg.amount)

    def release(self, pvp: PvpModel, outcome: Outcome) -> None:
        proposal = pvp.proposal
        self.add(proposal.sender, proposal.pay_currency, proposal.pay_amount, -proposal.pay_amount)
        self.count(proposal.sender, proposal.pay_currency, pvp.day, -proposal.pay_amount)
        pvp.status = outcome


def amount_refusal(*values: int) -> Reason | None:
    for value in values:
        if value <= 0:
            return Reason.NON_POSITIVE_AMOUNT
        if value > INT64_MAX:
            return Reason.AMOUNT_OVERFLOW
    return None


def stated_rate(kind: str, pay_amount: int, receive_amount: int) -> str:
    """A rate for the legs (every test currency has exponent 2): receive / pay to 18
    decimals when fair, that times 1.01 when skewed, pay / receive when inverted; always a
    well-formed rate, so the ledger judges it against its legs."""
    if not (0 < pay_amount <= INT64_MAX and 0 < receive_amount <= INT64_MAX):
        return "1"  # refused for its amounts before the rate matters
    exact = Fraction(receive_amount, pay_amount)
    if kind == "skewed":
        exact *= Fraction(101, 100)
    elif kind == "inverted":
        exact = 1 / exact
    # a rate is written with at most 18 digits on each side of the point: extreme legs (one
    # minor unit against INT64_MAX) get the nearest writable rate, which then contradicts them
    units = min(max(round(exact * 10**18), 1), 10**36 - 1)
    whole, fraction = divmod(units, 10**18)
    return f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")


def rate_contradicts(pay_amount: int, receive_amount: int, rate: str) -> bool:
    """The documented rule, written out with fractions: no trade within half a minor unit
    (0.005) of each amount has exactly this rate."""
    q = Fraction(Decimal(rate))
    pay, receive = Fraction(pay_amount, 100), Fraction(receive_amount, 100)
    return abs(receive - pay * q) > Fraction(1, 200) + q * Fraction(1, 200)


def rate_refusal(
    pay_currency: str, receive_currency: str, body: ProposePvp | DualPvp
) -> Reason | None:
    """RATE_MISMATCH for a rate that contradicts its legs (checked once both currencies are
    known: an unknown one is refused by the leg checks)."""
    if pay_currency not in CURRENCIES or receive_currency not in CURRENCIES:
        return None
    if rate_contradicts(body.pay_amount, body.receive_amount, body.rate):
        return Reason.RATE_MISMATCH
    return None


def plausible(amount: int) -> int:
    return amount if 0 < amount <= 3_000 else 1 + abs(amount) % 3_000


def first_of(*checks: Reason | Callable[[], Reason | None] | None) -> Reason | None:
    """The first refusal among checks evaluated in order (callables only when reached)."""
    for check in checks:
        reason = check() if callable(check) else check
        if reason is not None:
            return reason
    return None


def tamper(envelope: Envelope, how: str, party: str) -> tuple[Envelope, Reason | None]:
    """Damage the signatures of `envelope` and say which refusal that must cause."""
    body = envelope.body
    if not how:
        return envelope, None
    if body.KIND in CENTRAL_BANK_KINDS:
        if how == "drop":
            return Envelope.of(body), Reason.MISSING_SIGNATURE
        if how == "wrong_endorser":
            other = next(cb for cb in CB_IDS if cb != body.sender)
            forged = Signature(body.sender, signed(body, NET.keys[other]).signatures[0].value)
            return Envelope.of(body, (forged,)), Reason.BAD_SIGNATURE
        return Envelope.of(body, (corrupt(envelope.signatures[0]),)), Reason.BAD_SIGNATURE
    if how == "corrupt_endorsement":
        return corrupt_endorsement(envelope, party), Reason.BAD_SIGNATURE
    if how == "corrupt_party":
        return corrupt_party_signature(envelope, party), Reason.BAD_SIGNATURE
    if how == "wrong_endorser":
        other = next(cb for cb in CB_IDS if cb != NET.home[party])
        return sign(NET, body, endorsers={party: other}), Reason.NOT_HOME_CENTRAL_BANK
    return without_signature(envelope, NET.home[party], party), Reason.MISSING_SIGNATURE


def twins(envelope: Envelope, original: Envelope | None) -> list[Envelope]:
    """Envelopes with the body of `envelope`, pre-verified after it: `original` (untampered)
    when it differs, then copies with each party's own signature, or its central bank's
    endorsement, corrupted, and one with the party's leg endorsed validly at another place
    in another batch (as a central bank node that forwards the same instruction again does)."""
    out = [] if original is None or original is envelope else [original]
    for party in envelope.body.parties():
        out.append(corrupt_party_signature(envelope, party))
        out.append(corrupt_endorsement(envelope, party))
        home = NET.home.get(party)
        if home and envelope.endorsement(party) and envelope.party_signature(party):
            bare = without_signature(envelope, home, party)
            second = endorse_legs([(bare, party)] * 2, home, NET.keys[home])[1]
            out.append(bare.with_signature(second))  # leg 1 of a batch of 2
    return out


class LedgerMachine(RuleBasedStateMachine):
    """Drives one ledger and one model with the same commands."""

    ledger: Ledger
    model: Model
    now: int
    executed: int
    committed: list[Entry]
    pending: list[Entry]
    saved: tuple[Snapshot, Model]

    # ------------------------------------------------------------------ setup

    @initialize()
    def found_the_bridge(self) -> None:
        self.ledger = Ledger(
            NET.genesis, verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS
        )
        self.model = Model.empty()
        self.now = T0
        self.executed = 0
        self.committed, self.pending = [], []
        for bank, cb in BANKS:
            self.execute(admit_bank(NET, cb, bank), Outcome.APPLIED)
        for bank, cb in BANKS:
            currency = NET.currency_of[cb]
            body = Issue(
                new_id("iss"),
                cb,
                self.until(),
                bank,
                currency,
                START_FUNDS,
                signed_at=self.signing_time(),
            )
            self.execute(sign(NET, body), Outcome.ISSUED)
            self.model.add(bank, currency, START_FUNDS)
            self.model.supply[currency] = (self.model.supply[currency][0] + START_FUNDS, 0)
        self.commit_batch()

    def home(self, currency: str | None, who: str) -> str:
        return NET.currency_of.get(who, UNKNOWN_CURRENCY) if currency is None else currency

    def until(self, expired: bool = False) -> int:
        return self.now - 1 if expired else self.now + VALID_FOR

    def signing_time(self) -> int:
        """When the banks sign: just before now (never after an expired `until`)."""
        return self.now - 1

    @property
    def log(self) -> list[Entry]:
        return self.committed + self.pending

    # ------------------------------------------------------------------ applying

    def execute(
        self, envelope: Envelope, expected: Expected, original: Envelope | None = None
    ) -> bool:
        """Apply `envelope` now (every other time pre-verified first, in a batch with its
        `original` and its tampered twins); check the outcome or refusal the model predicts."""
        before = snapshot(self.ledger)
        refusal: Refused | None = None
        self.executed += 1
        if self.executed % 2:
            # changes no state (checked below on a refusal, and by the invariants)
            self.ledger.preverify([envelope, *twins(envelope, original)])
        try:
            receipt = self.ledger.apply(envelope, self.now)
        except Refused as caught:
            refusal = caught
        if refusal is not None:
            assert refusal.reason is expected, f"expected {expected}, got {refusal}"
            assert_unchanged(self.ledger, before)
            return False
        assert receipt.outcome is expected, f"expected {expected}, got {receipt}"
        assert not receipt.duplicate
        assert receipt.seq == before.next_seq == self.next_seq()
        assert self.ledger.pending_entries() == before.pending + 1
        self.pending.append(Entry(receipt.seq, self.now, envelope, receipt.outcome))
        return True

    def next_seq(self) -> int:
        return self.log[-1].seq + 1 if self.log else 1

    def submit(
        self,
        body: Instruction,
        how: str,
        party: str,
        shape: Reason | None,
        expired: bool,
        handler: Callable[[], Reason | None],
        outcome: Outcome,
    ) -> bool:
        """Sign, damage as asked, predict in the ledger's order, apply."""
        original = sign(NET, body)
        envelope, signature_refusal = tamper(original, how, party)
        expected = first_of(
            shape,
            Reason.INSTRUCTION_EXPIRED if expired else None,
            signature_refusal,
            handler,
        )
        return self.execute(envelope, expected or outcome, original)

    def pick_pvp(self, choice: tuple[bool, int]) -> PvpModel:
        pending_only, index = choice
        pvps = [self.model.pvps[key] for key in sorted(self.model.pvps)]
        pending = [pvp for pvp in pvps if pvp.status is Outcome.HELD]
        candidates = pending if pending_only and pending else pvps
        return candidates[index % len(candidates)]

    def drained(self, who: str, currency: str, drain: str | None, amount: int) -> int:
        """`amount`, or the payer's whole available balance (plus one), whatever it is."""
        if drain is None:
            return amount
        available = self.model.balance(who, currency)[0]
        return available + (1 if drain == "all+1" else 0)

    @staticmethod
    def honest_partner(partner: int | str) -> int:
        return partner if isinstance(partner, int) and partner % len(BANK_IDS) else 1

    @staticmethod
    def partner_of(who: str, partner: int | str) -> str:
        if isinstance(partner, str):
            return partner
        return BANK_IDS[(BANK_IDS.index(who) + partner) % len(BANK_IDS)]

    # ------------------------------------------------------------------ central bank rules

    @rule(
        cb=central_banks,
        to=parties,
        currency=currencies,
        amount=amounts,
        fill=st.booleans(),
        how=tampering,
        expired=stale,
    )
    def issue(
        self,
        cb: str,
        to: str,
        currency: str | None,
        amount: int,
        fill: bool,
        how: str,
        expired: bool,
    ) -> None:
        currency = self.home(currency, cb)
        issued, redeemed = self.model.supply.get(currency, (0, 0))
        if fill and currency in ISSUER and issued < INT64_MAX:
            amount = INT64_MAX - issued
        body = Issue(
            new_id("iss"),
            cb,
            self.until(expired),
            to,
            currency,
            amount,
            signed_at=self.signing_time(),
        )

        def handler() -> Reason | None:
            if currency not in ISSUER:
                return Reason.UNKNOWN_CURRENCY
            if ISSUER[currency] != cb:
                return Reason.NOT_ISSUER
            if to not in NET.home:
                return Reason.UNKNOWN_PARTICIPANT
            if to in CB_IDS:
                return Reason.NOT_A_BANK
            if NET.home[to] != cb:
                return Reason.NOT_HOME_CENTRAL_BANK
            if to in self.model.suspended:
                return Reason.PARTICIPANT_SUSPENDED
            if (to, currency) in self.model.frozen:
                return Reason.ACCOUNT_FROZEN
            if issued + amount > INT64_MAX:
                return Reason.AMOUNT_OVERFLOW
            return None

        if self.submit(body, how, cb, amount_refusal(amount), expired, handler, Outcome.ISSUED):
            self.model.add(to, currency, amount)
            self.model.supply[currency] = (issued + amount, redeemed)

    @rule(
        bank=banks,
        currency=currencies,
        amount=amounts,
        how=tampering,
        expired=stale,
        drain=drains,
    )
    def redeem(
        self,
        bank: str,
        currency: str | None,
        amount: int,
        how: str,
        expired: bool,
        drain: str | None,
    ) -> None:
        currency = self.home(currency, bank)
        amount = self.drained(bank, currency, drain, amount)
        body = Redeem(
            new_id("red"),
            bank,
            self.until(expired),
            currency,
            amount,
            signed_at=self.signing_time(),
        )

        def handler() -> Reason | None:
            if currency not in ISSUER:
                return Reason.UNKNOWN_CURRENCY
            if NET.home[bank] != ISSUER[currency]:
                return Reason.NOT_HOME_CENTRAL_BANK
            if bank in self.model.suspended:
                return Reason.PARTICIPANT_SUSPENDED
            if (bank, currency) in self.model.frozen:
                return Reason.ACCOUNT_FROZEN
            if self.model.balance(bank, currency)[0] < amount:
                return Reason.INSUFFICIENT_FUNDS
            return None

        if self.submit(body, how, bank, amount_refusal(amount), expired, handler, Outcome.REDEEMED):
            self.model.add(bank, currency, -amount)
            issued, redeemed = self.model.supply[currency]
            self.model.supply[currency] = (issued, redeemed + amount)

    @rule(
        cb=central_banks,
        per_transfer=st.sampled_from([0, 0, 500, 5_000]),
        per_day=st.sampled_from([0, 0, 3_000, 20_000]),
        allowed=st.sets(st.sampled_from(["CN", "HK", "TH", "AE"]), max_size=2),
    )
    def set_policy(self, cb: str, per_transfer: int, per_day: int, allowed: set[str]) -> None:
        jurisdictions = tuple(sorted(allowed))
        body = SetPolicy(
            new_id("pol"),
            cb,
            self.until(),
            per_transfer,
            per_day,
            jurisdictions,
            signed_at=self.signing_time(),
        )
        if self.submit(body, "", cb, None, False, lambda: None, Outcome.APPLIED):
            self.model.policies[cb] = Policy(per_transfer, per_day, jurisdictions)

    @rule(cb=central_banks, who=parties, currency=currencies, frozen=st.booleans(), how=tampering)
    def freeze(self, cb: str, who: str, currency: str | None, frozen: bool, how: str) -> None:
        currency = self.home(currency, cb)
        body = FreezeAccount(
            new_id("frz"), cb, self.until(), who, currency, frozen, signed_at=self.signing_time()
        )

        def handler() -> Reason | None:
            if currency not in ISSUER:
                return Reason.UNKNOWN_CURRENCY
            if ISSUER[currency] != cb:
                return Reason.NOT_ISSUER
            if who not in BANK_IDS:
                return Reason.UNKNOWN_PARTICIPANT
            return None

        if self.submit(body, how, cb, None, False, handler, Outcome.APPLIED):
            if frozen:
                self.model.frozen.add((who, currency))
            else:
                self.model.frozen.discard((who, currency))

    @rule(cb=central_banks, who=parties, suspend=st.booleans(), how=tampering)
    def set_status(self, cb: str, who: str, suspend: bool, how: str) -> None:
        status = "suspended" if suspend else "active"
        body = SetParticipantStatus(
            new_id("st"), cb, self.until(), who, status, signed_at=self.signing_time()
        )

        def handler() -> Reason | None:
            if who not in NET.home:
                return Reason.UNKNOWN_PARTICIPANT
            if who in CB_IDS:
                return Reason.NOT_A_BANK
            if NET.home[who] != cb:
                return Reason.NOT_HOME_CENTRAL_BANK
            return None

        if self.submit(body, how, cb, None, False, handler, Outcome.APPLIED):
            if suspend:
                self.model.suspended.add(who)
            else:
                self.model.suspended.discard(who)

    # ------------------------------------------------------------------ payments and PvP

    @rule(
        payer=banks,
        partner=partners,
        currency=currencies,
        amount=amounts,
        how=tampering,
        expired=stale,
        honest=honesty,
        drain=drains,
    )
    def pay(
        self,
        payer: str,
        partner: int | str,
        currency: str | None,
        amount: int,
        how: str,
        expired: bool,
        honest: bool,
        drain: str | None,
    ) -> None:
        if honest:
            partner, amount, how, expired = (
                self.honest_partner(partner),
                plausible(amount),
                "",
                False,
            )
        payee = self.partner_of(payer, partner)
        currency = self.home(currency, payer)
        amount = self.drained(payer, currency, drain, amount)
        body = Pay(
            new_id("pay"),
            payer,
            self.until(expired),
            payee,
            currency,
            amount,
            "INV-1",
            signed_at=self.signing_time(),
        )
        leg = Leg(payer, payee, currency, amount)
        shape = first_of(amount_refusal(amount), Reason.SAME_PARTY if payer == payee else None)

        def handler() -> Reason | None:
            return self.model.leg_refusal(leg, self.now)

        if self.submit(body, how, payer, shape, expired, handler, Outcome.SETTLED):
            self.model.move(leg, self.now)

    @rule(
        proposer=banks,
        partner=partners,
        pay_currency=currencies,
        receive_currency=currencies,
        pay_amount=amounts,
        receive_amount=amounts,
        settle_in=st.sampled_from([0, 1, 60_000, 3_600_000, DAY_MS]),
        how=tampering,
        expired=stale,
        honest=honesty,
        drain=drains,
        rate_kind=rate_kinds,
    )
    def propose_pvp(
        self,
        proposer: str,
        partner: int | str,
        pay_currency: str | None,
        receive_currency: str | None,
        pay_amount: int,
        receive_amount: int,
        settle_in: int,
        how: str,
        expired: bool,
        honest: bool,
        drain: str | None = None,
        rate_kind: str = "fair",
    ) -> None:
        if honest:
            partner, how, expired = self.honest_partner(partner), "", False
            pay_amount, receive_amount = plausible(pay_amount), plausible(receive_amount)
            settle_in = max(settle_in, 60_000)
            rate_kind = "fair"
        counterparty = self.partner_of(proposer, partner)
        pay_currency = self.home(pay_currency, proposer)
        pay_amount = self.drained(proposer, pay_currency, drain, pay_amount)
        receive_currency = self.home(receive_currency, counterparty)
        settle_by = self.now + settle_in
        body = ProposePvp(
            new_id("pvp"), proposer, self.until(expired), counterparty, pay_currency, pay_amount,
            receive_currency, receive_amount, stated_rate(rate_kind, pay_amount, receive_amount),
            settle_by, "corridor FX",
            signed_at=self.signing_time(),
        )  # fmt: skip
        leg_a, leg_b = body.legs()
        shape = first_of(
            amount_refusal(pay_amount, receive_amount),
            Reason.SAME_PARTY if proposer == counterparty else None,
            Reason.SAME_CURRENCY if pay_currency == receive_currency else None,
        )

        def handler() -> Reason | None:
            return first_of(
                Reason.PVP_EXPIRED if settle_by <= self.now else None,
                rate_refusal(pay_currency, receive_currency, body),
                lambda: self.model.leg_refusal(leg_a, self.now),
                lambda: self.model.leg_refusal(leg_b, self.now, receiving_only=True),
            )

        if self.submit(body, how, proposer, shape, expired, handler, Outcome.HELD):
            self.model.add(proposer, pay_currency, -pay_amount, pay_amount)
            self.model.count(proposer, pay_currency, self.now // DAY_MS, pay_amount)
            key = (proposer, body.instruction_id)
            self.model.pvps[key] = PvpModel(body, Outcome.HELD, self.now // DAY_MS)

    @precondition(lambda self: self.model.pvps)
    @rule(
        choice=pvp_choices,
        acceptor=others,
        terms_ok=st.sampled_from([True, True, True, False]),
        how=tampering,
        honest=honesty,
    )
    def accept_pvp(
        self,
        choice: tuple[bool, int],
        acceptor: str | None,
        terms_ok: bool,
        how: str,
        honest: bool,
    ) -> None:
        if honest:
            acceptor, terms_ok, how = None, True, ""
        pvp = self.pick_pvp(choice)
        proposal = pvp.proposal
        sender = proposal.counterparty if acceptor is None else acceptor
        terms = proposal.terms_hash() if terms_ok else "0" * 64
        body = AcceptPvp(
            new_id("acc"),
            sender,
            self.until(),
            proposal.sender,
            proposal.instruction_id,
            terms,
            signed_at=self.signing_time(),
        )
        leg_a, leg_b = proposal.legs()

        def handler() -> Reason | None:
            return first_of(
                Reason.NOT_A_PARTY if sender != proposal.counterparty else None,
                Reason.PVP_NOT_PENDING if pvp.status is not Outcome.HELD else None,
                Reason.PVP_EXPIRED if self.now >= proposal.settle_by else None,
                Reason.PVP_TERMS_MISMATCH if not terms_ok else None,
                lambda: self.model.leg_refusal(leg_b, self.now),
                lambda: self.model.leg_refusal(leg_a, self.now, receiving_only=True),
            )

        before = self.balances_of(proposal.legs())
        if self.submit(body, how, sender, None, False, handler, Outcome.SETTLED):
            self.model.add(leg_a.payer, leg_a.currency, held=-leg_a.amount)
            self.model.add(leg_a.payee, leg_a.currency, available=leg_a.amount)
            self.model.move(leg_b, self.now)
            pvp.status = Outcome.SETTLED
            self.check_both_legs_moved(proposal.legs(), before, first_from_held=True)

    def balances_of(self, legs: tuple[Leg, Leg]) -> dict[tuple[str, str], tuple[int, int]]:
        accounts = [(who, leg.currency) for leg in legs for who in (leg.payer, leg.payee)]
        return {account: self.ledger.balance(*account) for account in accounts}

    def check_both_legs_moved(
        self,
        legs: tuple[Leg, Leg],
        before: dict[tuple[str, str], tuple[int, int]],
        *,
        first_from_held: bool,
    ) -> None:
        """Both legs of a settled PvP moved, in full, in the same step."""
        for number, leg in enumerate(legs):
            slot = 1 if first_from_held and number == 0 else 0
            payer, payee = (leg.payer, leg.currency), (leg.payee, leg.currency)
            assert self.ledger.balance(*payer)[slot] == before[payer][slot] - leg.amount
            assert self.ledger.balance(*payee)[0] == before[payee][0] + leg.amount

    @precondition(lambda self: self.model.pvps)
    @rule(choice=pvp_choices, rejecter=others, how=tampering)
    def reject_pvp(self, choice: tuple[bool, int], rejecter: str | None, how: str) -> None:
        pvp = self.pick_pvp(choice)
        proposal = pvp.proposal
        sender = proposal.counterparty if rejecter is None else rejecter
        body = RejectPvp(
            new_id("rej"),
            sender,
            self.until(),
            proposal.sender,
            proposal.instruction_id,
            signed_at=self.signing_time(),
        )

        def handler() -> Reason | None:
            if sender != proposal.counterparty:
                return Reason.NOT_A_PARTY
            return Reason.PVP_NOT_PENDING if pvp.status is not Outcome.HELD else None

        if self.submit(body, how, sender, None, False, handler, Outcome.REJECTED):
            self.model.release(pvp, Outcome.REJECTED)

    @precondition(lambda self: self.model.pvps)
    @rule(choice=pvp_choices, canceller=others, how=tampering)
    def cancel_pvp(self, choice: tuple[bool, int], canceller: str | None, how: str) -> None:
        pvp = self.pick_pvp(choice)
        proposal = pvp.proposal
        sender = proposal.sender if canceller is None else canceller
        body = CancelPvp(
            new_id("can"),
            sender,
            self.until(),
            proposal.instruction_id,
            signed_at=self.signing_time(),
        )
        own = self.model.pvps.get((sender, proposal.instruction_id))

        def handler() -> Reason | None:
            if own is None:
                return Reason.UNKNOWN_PVP
            return Reason.PVP_NOT_PENDING if own.status is not Outcome.HELD else None

        if self.submit(body, how, sender, None, False, handler, Outcome.CANCELLED):
            assert own is not None
            self.model.release(own, Outcome.CANCELLED)

    @rule(
        sender=banks,
        partner=st.integers(0, 4),
        pay_currency=currencies,
        receive_currency=currencies,
        pay_amount=amounts,
        receive_amount=amounts,
        how=tampering,
        tamper_counterparty=st.booleans(),
        expired=stale,
        honest=honesty,
        drain=drains,
        rate_kind=rate_kinds,
    )
    def dual_pvp(
        self,
        sender: str,
        partner: int,
        pay_currency: str | None,
        receive_currency: str | None,
        pay_amount: int,
        receive_amount: int,
        how: str,
        tamper_counterparty: bool,
        expired: bool,
        honest: bool,
        drain: str | None,
        rate_kind: str,
    ) -> None:
        if honest:
            partner, how, expired = self.honest_partner(partner), "", False
            pay_amount, receive_amount = plausible(pay_amount), plausible(receive_amount)
            rate_kind = "fair"
        counterparty = self.partner_of(sender, partner)
        pay_currency = self.home(pay_currency, sender)
        pay_amount = self.drained(sender, pay_currency, drain, pay_amount)
        receive_currency = self.home(receive_currency, counterparty)
        body = DualPvp(
            new_id("dual"), sender, self.until(expired), counterparty, pay_currency, pay_amount,
            receive_currency, receive_amount, stated_rate(rate_kind, pay_amount, receive_amount),
            signed_at=self.signing_time(),
        )  # fmt: skip
        leg_a, leg_b = body.legs()
        shape = first_of(
            amount_refusal(pay_amount, receive_amount),
            Reason.SAME_PARTY if sender == counterparty else None,
            Reason.SAME_CURRENCY if pay_currency == receive_currency else None,
        )

        def handler() -> Reason | None:
            return first_of(
                rate_refusal(pay_currency, receive_currency, body),
                lambda: self.model.leg_refusal(leg_a, self.now),
                lambda: self.model.leg_refusal(leg_b, self.now),
            )

        party = counterparty if tamper_counterparty else sender
        before = self.balances_of(body.legs())
        if self.submit(body, how, party, shape, expired, handler, Outcome.SETTLED):
            self.model.move(leg_a, self.now)
            self.model.move(leg_b, self.now)
            self.check_both_legs_moved(body.legs(), before, first_from_held=False)

    # The PvP lifecycle needs a proposal before anything else can happen to it; these two
    # rules make honest proposals and acceptances as likely as any other command.

    @rule(
        proposer=banks,
        partner=st.integers(1, 4),
        pay_amount=st.integers(1, 3_000),
        receive_amount=st.integers(1, 3_000),
        settle_in=st.sampled_from([60_000, 3_600_000, DAY_MS]),
    )
    def propose_honest_pvp(
        self, proposer: str, partner: int, pay_amount: int, receive_amount: int, settle_in: int
    ) -> None:
        self.propose_pvp(
            proposer, partner, None, None, pay_amount, receive_amount, settle_in, "", False, True
        )

    @precondition(lambda self: any(p.status is Outcome.HELD for p in self.model.pvps.values()))
    @rule(index=indexes)
    def accept_honest_pvp(self, index: int) -> None:
        self.accept_pvp((True, index), None, True, "", True)

    @precondition(lambda self: any(p.status is Outcome.HELD for p in self.model.pvps.values()))
    @rule(
        index=indexes,
        drain=st.sampled_from(["all", "all+1"]),
        partner=st.integers(1, 4),
        redeem=st.booleans(),
    )
    def spend_held_funds(self, index: int, drain: str, partner: int, redeem: bool) -> None:
        """A proposer tries to pay or redeem its held funds (and only those would be short)."""
        proposal = self.pick_pvp((True, index)).proposal
        who, currency = proposal.sender, proposal.pay_currency
        if redeem:
            self.redeem(who, currency, 0, "", False, drain)
        else:
            self.pay(who, partner, currency, 0, "", False, False, drain)

    @rule(
        payer=banks,
        offset=st.sampled_from(
            [0, CLOCK_SKEW_MS, CLOCK_SKEW_MS + 1, -MAX_SIGNED_AGE_MS, -MAX_SIGNED_AGE_MS - 1]
        )
        | st.integers(-MAX_SIGNED_AGE_MS - DAY_MS, CLOCK_SKEW_MS + 3_600_000),
    )
    def pay_signed_off_the_ledger_clock(self, payer: str, offset: int) -> None:
        """A payment signed `offset` ms from the ledger's time: INVALID_TIME, changing nothing,
        beyond the clock skew ahead or the age bound behind; otherwise like any payment."""
        signed_at = self.now + offset
        payee = self.partner_of(payer, 1)
        currency = NET.currency_of[payer]
        until = max(self.now, signed_at) + VALID_FOR
        body = Pay(new_id("pay"), payer, until, payee, currency, 1, "", signed_at=signed_at)
        leg = Leg(payer, payee, currency, 1)
        off_clock = not -MAX_SIGNED_AGE_MS <= offset <= CLOCK_SKEW_MS
        expected = first_of(
            Reason.INVALID_TIME if off_clock else None,
            lambda: self.model.leg_refusal(leg, self.now),
        )
        if self.execute(sign(NET, body), expected or Outcome.SETTLED):
            self.model.move(leg, self.now)

    # ------------------------------------------------------------------ time

    @rule(step=st.sampled_from([1, 1_000, 60_000, 3_600_000, DAY_MS]), sweep=st.booleans())
    def advance_time(self, step: int, sweep: bool) -> None:
        """The clock moves on; the bridge may expire what is due."""
        self.now += step
        if sweep:
            self.sweep_expiries()

    def sweep_expiries(self) -> None:
        due = sorted(
            (pvp.proposal.settle_by, key, pvp)
            for key, pvp in self.model.pvps.items()
            if pvp.status is Outcome.HELD and pvp.proposal.settle_by <= self.now
        )
        before = snapshot(self.ledger)
        receipts = self.ledger.expire_due(self.now)
        assert len(receipts) == len(due)
        if not due:
            assert_unchanged(self.ledger, before)
        for receipt, (_, (proposer, pvp_id), pvp) in zip(receipts, due, strict=True):
            envelope = expiry_envelope(proposer, pvp_id, self.now)
            assert receipt.instruction_id == envelope.body.instruction_id
            assert receipt.outcome is Outcome.EXPIRED
            assert receipt.seq == self.next_seq()
            self.pending.append(Entry(receipt.seq, self.now, envelope, Outcome.EXPIRED))
            self.model.release(pvp, Outcome.EXPIRED)
            pvp.expired_at = self.now

    @precondition(lambda self: self.model.pvps)
    @rule(choice=pvp_choices)
    def force_expiry(self, choice: tuple[bool, int]) -> None:
        """Apply the bridge's expiry instruction directly, due or not."""
        pvp = self.pick_pvp(choice)
        proposer, pvp_id = pvp.proposal.sender, pvp.proposal.instruction_id
        envelope = expiry_envelope(proposer, pvp_id, self.now)
        if pvp.expired_at == self.now:
            self.check_duplicate(next(e for e in self.log if e.envelope.body == envelope.body))
            return
        expected = first_of(
            Reason.ID_CONFLICT if pvp.expired_at is not None else None,
            Reason.PVP_NOT_PENDING if pvp.status is not Outcome.HELD else None,
            Reason.NOT_YET_EXPIRED if self.now < pvp.proposal.settle_by else None,
        )
        if self.execute(envelope, expected or Outcome.EXPIRED):
            self.model.release(pvp, Outcome.EXPIRED)
            pvp.expired_at = self.now

    # ------------------------------------------------------------------ replays

    @rule(index=indexes)
    def resubmit_logged(self, index: int) -> None:
        """Any logged envelope, sent again, is a duplicate and changes nothing."""
        self.check_duplicate(self.log[index % len(self.log)])

    def check_duplicate(self, entry: Entry) -> None:
        before = snapshot(self.ledger)
        receipt = self.ledger.apply(entry.envelope, self.now)
        assert receipt.duplicate
        assert (receipt.seq, receipt.outcome) == (entry.seq, entry.outcome)
        assert receipt.body_hash == entry.envelope.body_hash()
        assert_unchanged(self.ledger, before)

    @rule(index=indexes)
    def resubmit_changed_body(self, index: int) -> None:
        """A logged id with any other body is ID_CONFLICT, whatever else is wrong with it."""
        entry = self.log[index % len(self.log)]
        body = entry.envelope.body
        changed = replace(body, valid_until=body.valid_until + 1)
        self.execute(sign(NET, changed), Reason.ID_CONFLICT)

    # ------------------------------------------------------------------ batches

    @rule(store_fails=st.sampled_from([False, False, False, True]))
    def end_batch(self, store_fails: bool) -> None:
        """The store commits the batch, or fails and the ledger rolls it back."""
        if store_fails:
            self.rollback_batch()
        else:
            self.commit_batch()

    def commit_batch(self) -> None:
        """The batch holds exactly the entries applied since the last one."""
        batch = self.ledger.take_batch()
        assert list(batch.entries) == self.pending
        assert batch.next_seq == self.next_seq()
        self.committed += self.pending
        self.pending = []
        self.saved = (snapshot(self.ledger), copy.deepcopy(self.model))

    def rollback_batch(self) -> None:
        """The ledger returns exactly to the last committed state."""
        self.ledger.rollback()
        state, model = self.saved
        assert_unchanged(self.ledger, state)
        self.model = copy.deepcopy(model)
        self.pending = []

    # ------------------------------------------------------------------ invariants

    @invariant()
    def money_is_conserved(self) -> None:
        assert self.ledger.conservation_errors() == []
        for account, (available, held) in self.ledger.balances.items():
            assert available >= 0, account
            assert held >= 0, account

    @invariant()
    def ledger_matches_model(self) -> None:
        def nonzero(rows: dict[tuple[str, str], tuple[int, int]]) -> dict[object, object]:
            return {k: v for k, v in rows.items() if v != (0, 0)}

        ledger, model = self.ledger, self.model
        assert nonzero(dict(ledger.balances)) == nonzero(model.balances)
        assert ledger.supply == model.supply
        assert ledger.usage == model.usage
        assert set(ledger.frozen) == model.frozen
        suspended = {p.id for p in ledger.participants.values() if p.status == "suspended"}
        assert suspended == model.suspended
        assert ledger.policies == model.policies
        assert {k: s.status for k, s in ledger.pvps.items()} == {
            k: p.status for k, p in model.pvps.items()
        }

    @invariant()
    def holds_are_exactly_the_open_proposals(self) -> None:
        """Every held amount belongs to a pending PvP; no PvP is half settled."""
        open_legs: dict[tuple[str, str], int] = {}
        for state in self.ledger.pvps.values():
            if state.status is Outcome.HELD:
                key = (state.proposal.sender, state.proposal.pay_currency)
                open_legs[key] = open_legs.get(key, 0) + state.proposal.pay_amount
        held = {k: h for k, (_, h) in self.ledger.balances.items() if h}
        assert held == open_legs

    @invariant()
    def log_replays_to_the_same_state(self) -> None:
        assert self.ledger.pending_entries() == len(self.pending)
        replayed = replay(NET.genesis, self.log, verifier=None, check=SignatureCheck.NONE)
        assert replayed.tables() == self.ledger.tables()
        assert all_receipts(replayed) == all_receipts(self.ledger)
        assert replayed.next_seq == self.ledger.next_seq

    def teardown(self) -> None:
        """At the end of a run the whole log, round-tripped through its canonical bytes,
        replays with every signature verified."""
        if not hasattr(self, "ledger"):
            return
        entries = [Entry.from_canonical_bytes(e.canonical_bytes()) for e in self.log]
        replayed = replay(NET.genesis, entries, verifier=FastVerifier(), check=SignatureCheck.ALL)
        assert replayed.tables() == self.ledger.tables()
        assert all_receipts(replayed) == all_receipts(self.ledger)


def all_receipts(ledger: Ledger) -> dict[tuple[str, str], Receipt]:
    """Every receipt of an in-memory ledger, committed and pending."""
    return {**dict(ledger.receipts.items()), **ledger.receipts.pending()}


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerStateful = LedgerMachine.TestCase
