"""Shared test helpers: a four-central-bank network, signed envelopes, state snapshots.

The network is the mBridge-shaped corridor used throughout the suites: PBOC/CNY (CN),
HKMA/HKD (HK), BOT/THB (TH), CBUAE/AED (AE), each with admitted commercial banks. Keys are
`cryptography` keys (fast), generated once per process. Envelopes are built with the real
`bridge.signing` functions: each bank signs its own body and its home central bank endorses it.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    CENTRAL_BANK_KINDS,
    DAY_MS,
    AcceptPvp,
    AdmitBank,
    Amount,
    CancelPvp,
    CurrencyCode,
    DualPvp,
    Envelope,
    FreezeAccount,
    Genesis,
    GenesisBank,
    Instruction,
    Issue,
    Millis,
    ParticipantId,
    Pay,
    ProposePvp,
    Receipt,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
)
from bridge.errors import Reason, Refused
from bridge.rates import implied_rate
from bridge.signing import endorse, sign_as_party, signed

# (central bank, jurisdiction, currency, minor-unit exponent)
CENTRAL_BANKS: tuple[tuple[str, str, str, int], ...] = (
    ("PBOC", "CN", "CNY", 2),
    ("HKMA", "HK", "HKD", 2),
    ("BOT", "TH", "THB", 2),
    ("CBUAE", "AE", "AED", 2),
)
# (commercial bank, home central bank)
BANKS: tuple[tuple[str, str], ...] = (
    ("ICBC", "PBOC"),
    ("CCB", "PBOC"),
    ("BOCHK", "HKMA"),
    ("KBANK", "BOT"),
    ("ENBD", "CBUAE"),
)

T0: Millis = 20_000 * DAY_MS + 9 * 3_600_000  # 09:00 on day 20000
VALID_FOR: Millis = 10 * DAY_MS
SIGNED_AT: Millis = T0 - 1_000  # when the factories' instructions are signed by default

_ids = itertools.count(1)


def new_id(prefix: str = "tx") -> str:
    """A fresh instruction id, unique within the test process."""
    return f"{prefix}-{next(_ids)}"


@dataclass(frozen=True)
class Network:
    """Keys and genesis of the test corridor."""

    keys: Mapping[ParticipantId, PrivateKey]
    genesis: Genesis
    home: Mapping[ParticipantId, ParticipantId]  # participant -> its central bank
    currency_of: Mapping[ParticipantId, CurrencyCode]  # participant -> home currency
    jurisdiction_of: Mapping[ParticipantId, str]

    @property
    def central_banks(self) -> tuple[ParticipantId, ...]:
        return tuple(cb for cb, *_ in CENTRAL_BANKS)

    @property
    def banks(self) -> tuple[ParticipantId, ...]:
        return tuple(bank for bank, _ in BANKS)

    def issuer_of(self, currency: CurrencyCode) -> ParticipantId:
        return next(cb for cb, _, code, _ in CENTRAL_BANKS if code == currency)


@functools.cache
def network() -> Network:
    """The shared test network (keys generated once per process)."""
    keys = {
        who: PrivateKey.generate()
        for who in (*(c[0] for c in CENTRAL_BANKS), *(b[0] for b in BANKS))
    }
    return network_with_keys(keys, chain_id="mbridge-test")


def network_with_keys(keys: Mapping[str, PrivateKey], *, chain_id: str) -> Network:
    """The test corridor (CENTRAL_BANKS, BANKS) signed with the given keys."""
    genesis = Genesis(
        chain_id=chain_id,
        central_banks=tuple(
            GenesisBank(cb, jurisdiction, keys[cb].public_key, currency, exponent)
            for cb, jurisdiction, currency, exponent in CENTRAL_BANKS
        ),
        quorum=3,
    )
    home = {cb: cb for cb, *_ in CENTRAL_BANKS} | dict(BANKS)
    cb_currency = {cb: currency for cb, _, currency, _ in CENTRAL_BANKS}
    cb_jurisdiction = {cb: jurisdiction for cb, jurisdiction, _, _ in CENTRAL_BANKS}
    return Network(
        keys=dict(keys),
        genesis=genesis,
        home=home,
        currency_of={who: cb_currency[cb] for who, cb in home.items()},
        jurisdiction_of={who: cb_jurisdiction[cb] for who, cb in home.items()},
    )


def consistent_rate(
    net: Network, pay: tuple[CurrencyCode, Amount], receive: tuple[CurrencyCode, Amount]
) -> str:
    """The rate (receive / pay, major units) that agrees with both legs; "1" for legs no rate
    can describe (a non-positive or out-of-range amount, which the bridge refuses anyway)."""
    exponent = {b.currency: b.exponent for b in net.genesis.central_banks}
    try:
        return implied_rate(
            pay[1], exponent.get(pay[0], 2), receive[1], exponent.get(receive[0], 2)
        )
    except (TypeError, ValueError):
        return "1"


# ---------------------------------------------------------------------------- signing


def sign(
    net: Network,
    body: Instruction,
    *,
    endorsers: Mapping[ParticipantId, ParticipantId] | None = None,
) -> Envelope:
    """Sign `body` as the bridge expects: a central bank signs its own instructions; for a
    bank instruction every party signs and its home central bank (or `endorsers[party]`)
    endorses."""
    if body.KIND in CENTRAL_BANK_KINDS:
        return signed(body, net.keys[body.sender])
    envelope = Envelope.of(body)
    for party in body.parties():
        envelope = sign_as_party(envelope, party, net.keys[party])
    for party in body.parties():
        endorser = (endorsers or {}).get(party, net.home[party])
        envelope = endorse(envelope, party, endorser, net.keys[endorser])
    return envelope


def corrupt(signature: Signature) -> Signature:
    """The same signature with one bit flipped."""
    value = bytearray(signature.value)
    value[-1] ^= 0x01
    return replace(signature, value=bytes(value))


def with_signatures(envelope: Envelope, signatures: tuple[Signature, ...]) -> Envelope:
    return Envelope(envelope.body, signatures, envelope.body_bytes)


def corrupt_endorsement(envelope: Envelope, party: ParticipantId) -> Envelope:
    """`envelope` with `party`'s central bank endorsement made invalid."""
    return with_signatures(
        envelope,
        tuple(corrupt(s) if s.endorses == party else s for s in envelope.signatures),
    )


def corrupt_party_signature(envelope: Envelope, party: ParticipantId) -> Envelope:
    """`envelope` with `party`'s own signature made invalid (endorsements untouched)."""
    return with_signatures(
        envelope,
        tuple(
            corrupt(s) if s.signer == party and not s.endorses else s for s in envelope.signatures
        ),
    )


def without_signature(envelope: Envelope, signer: ParticipantId, endorses: str = "") -> Envelope:
    return with_signatures(
        envelope,
        tuple(
            s for s in envelope.signatures if not (s.signer == signer and s.endorses == endorses)
        ),
    )


# ---------------------------------------------------------------------------- instructions


def _header(
    instruction_id: str | None, valid_until: Millis | None, signed_at: Millis | None
) -> tuple[str, Millis, Millis]:
    """Id, validity and signing time: by default valid for VALID_FOR from T0, signed at
    SIGNED_AT (never after the validity given)."""
    until = T0 + VALID_FOR if valid_until is None else valid_until
    signed = min(SIGNED_AT, until) if signed_at is None else signed_at
    return (instruction_id or new_id(), until, signed)


def admit_bank(
    net: Network,
    central_bank: ParticipantId,
    bank: ParticipantId,
    public_key: bytes | None = None,
    *,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    key = net.keys[bank].public_key if public_key is None else public_key
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(net, AdmitBank(iid, central_bank, until, bank, key, signed_at=signed))


def set_status(
    net: Network,
    central_bank: ParticipantId,
    participant: ParticipantId,
    status: str,
    *,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(
        net, SetParticipantStatus(iid, central_bank, until, participant, status, signed_at=signed)
    )


def set_policy(
    net: Network,
    central_bank: ParticipantId,
    *,
    per_transfer_limit: Amount = 0,
    per_day_limit: Amount = 0,
    allowed_jurisdictions: tuple[str, ...] = (),
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    body = SetPolicy(
        iid,
        central_bank,
        until,
        per_transfer_limit,
        per_day_limit,
        allowed_jurisdictions,
        signed_at=signed,
    )
    return sign(net, body)


def freeze(
    net: Network,
    central_bank: ParticipantId,
    participant: ParticipantId,
    currency: CurrencyCode,
    frozen: bool = True,
    *,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(
        net,
        FreezeAccount(iid, central_bank, until, participant, currency, frozen, signed_at=signed),
    )


def issue(
    net: Network,
    central_bank: ParticipantId,
    to: ParticipantId,
    amount: Amount,
    currency: CurrencyCode | None = None,
    *,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    code = net.currency_of[central_bank] if currency is None else currency
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(net, Issue(iid, central_bank, until, to, code, amount, signed_at=signed))


def redeem(
    net: Network,
    bank: ParticipantId,
    amount: Amount,
    currency: CurrencyCode | None = None,
    *,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    code = net.currency_of[bank] if currency is None else currency
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(net, Redeem(iid, bank, until, code, amount, signed_at=signed))


def pay(
    net: Network,
    payer: ParticipantId,
    payee: ParticipantId,
    amount: Amount,
    currency: CurrencyCode | None = None,
    *,
    reference: str = "",
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    code = net.currency_of[payer] if currency is None else currency
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    return sign(net, Pay(iid, payer, until, payee, code, amount, reference, signed_at=signed))


def pvp_proposal(
    net: Network,
    proposer: ParticipantId,
    counterparty: ParticipantId,
    pay_amount: Amount,
    receive_amount: Amount,
    *,
    pay_currency: CurrencyCode | None = None,
    receive_currency: CurrencyCode | None = None,
    rate: str | None = None,
    settle_by: Millis = T0 + 3_600_000,
    reference: str = "",
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> ProposePvp:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    pay_code = net.currency_of[proposer] if pay_currency is None else pay_currency
    receive_code = net.currency_of[counterparty] if receive_currency is None else receive_currency
    if rate is None:
        rate = consistent_rate(net, (pay_code, pay_amount), (receive_code, receive_amount))
    return ProposePvp(
        iid,
        proposer,
        until,
        counterparty,
        pay_code,
        pay_amount,
        receive_code,
        receive_amount,
        rate,
        settle_by,
        reference,
        signed_at=signed,
    )


def propose_pvp(
    net: Network,
    proposer: ParticipantId,
    counterparty: ParticipantId,
    pay_amount: Amount,
    receive_amount: Amount,
    **options: Any,
) -> Envelope:
    return sign(
        net, pvp_proposal(net, proposer, counterparty, pay_amount, receive_amount, **options)
    )


def accept_pvp(
    net: Network,
    proposal: ProposePvp,
    *,
    acceptor: ParticipantId | None = None,
    terms_hash: str | None = None,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    body = AcceptPvp(
        iid,
        proposal.counterparty if acceptor is None else acceptor,
        until,
        proposal.sender,
        proposal.instruction_id,
        proposal.terms_hash() if terms_hash is None else terms_hash,
        signed_at=signed,
    )
    return sign(net, body)


def reject_pvp(
    net: Network,
    proposal: ProposePvp,
    *,
    rejecter: ParticipantId | None = None,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    sender = proposal.counterparty if rejecter is None else rejecter
    return sign(
        net,
        RejectPvp(iid, sender, until, proposal.sender, proposal.instruction_id, signed_at=signed),
    )


def cancel_pvp(
    net: Network,
    proposal: ProposePvp,
    *,
    canceller: ParticipantId | None = None,
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    sender = proposal.sender if canceller is None else canceller
    return sign(net, CancelPvp(iid, sender, until, proposal.instruction_id, signed_at=signed))


def dual_pvp(
    net: Network,
    sender: ParticipantId,
    counterparty: ParticipantId,
    pay_amount: Amount,
    receive_amount: Amount,
    *,
    pay_currency: CurrencyCode | None = None,
    receive_currency: CurrencyCode | None = None,
    rate: str | None = None,
    reference: str = "",
    instruction_id: str | None = None,
    valid_until: Millis | None = None,
    signed_at: Millis | None = None,
    endorsers: Mapping[ParticipantId, ParticipantId] | None = None,
) -> Envelope:
    iid, until, signed = _header(instruction_id, valid_until, signed_at)
    pay_code = net.currency_of[sender] if pay_currency is None else pay_currency
    receive_code = net.currency_of[counterparty] if receive_currency is None else receive_currency
    if rate is None:
        rate = consistent_rate(net, (pay_code, pay_amount), (receive_code, receive_amount))
    body = DualPvp(
        iid,
        sender,
        until,
        counterparty,
        pay_code,
        pay_amount,
        receive_code,
        receive_amount,
        rate,
        reference,
        signed_at=signed,
    )
    return sign(net, body, endorsers=endorsers)


# ---------------------------------------------------------------------------- ledgers


def make_ledger(
    net: Network | None = None,
    *,
    check: SignatureCheck = SignatureCheck.ENDORSEMENTS,
    admit: bool = True,
) -> Ledger:
    """A fresh ledger of the test network with every commercial bank admitted."""
    net = network() if net is None else net
    verifier = None if check is SignatureCheck.NONE else FastVerifier()
    ledger = Ledger(net.genesis, verifier=verifier, check=check)
    if admit:
        for bank, central_bank in BANKS:
            ledger.apply(admit_bank(net, central_bank, bank), T0)
    return ledger


def fund(
    ledger: Ledger,
    net: Network,
    bank: ParticipantId,
    amount: Amount,
    currency: CurrencyCode | None = None,
    *,
    now: Millis = T0,
) -> Receipt:
    """Issue `amount` of `currency` (the bank's home currency by default) to `bank`."""
    code = net.currency_of[bank] if currency is None else currency
    return ledger.apply(issue(net, net.issuer_of(code), bank, amount, code), now)


# ---------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused instruction must leave untouched."""

    tables: dict[str, dict[Any, Any]]
    pending: int
    next_seq: int


def snapshot(ledger: Ledger) -> Snapshot:
    tables = copy.deepcopy({name: dict(rows) for name, rows in ledger.tables().items()})
    # the receipts held in memory, committed and pending (all of them, for MemoryReceipts)
    tables["receipts"] = {**dict(ledger.receipts.items()), **ledger.receipts.pending()}
    return Snapshot(tables, ledger.pending_entries(), ledger.next_seq)


def assert_unchanged(ledger: Ledger, before: Snapshot) -> None:
    assert snapshot(ledger) == before


def assert_refused(ledger: Ledger, envelope: Envelope, now: Millis, reason: Reason) -> Refused:
    """Apply `envelope`, expect refusal with `reason`, and check that nothing changed."""
    before = snapshot(ledger)
    with pytest.raises(Refused) as caught:
        ledger.apply(envelope, now)
    assert caught.value.reason is reason, str(caught.value)
    assert_unchanged(ledger, before)
    return caught.value
