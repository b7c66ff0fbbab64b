"""`cbdc-bridge bench core`: durable PvP throughput of the settlement core against its floors.

One process, one run, four figures over the same pre-signed dual-signed PvPs:

- `core_pvp_per_s`: `SettlementEngine` over a `SqliteStore` (WAL, synchronous=FULL) settling
  the PvPs in batches, verifying both central bank endorsements of every PvP;
- `core_nosig_pvp_per_s`: the same with signature checks off;
- `raw_sqlite_pvp_per_s`: a plain sqlite3 loop of the same shape (four balance UPDATEs and one
  INSERT of an entry-sized row per PvP, one transaction per batch, same pragmas);
- `verify_only_pvp_per_s`: the two endorsement verifications per PvP, with `cryptography`
  alone (signatures pre-encoded, keys pre-loaded).

`storage_ratio` (core without signatures / raw SQLite) says what the core costs on top of
its storage; `sig_ratio` (core / verify only) what it costs on top of its cryptography.
Absolute figures drift between runs and machines; the ratios are what to compare.
"""

from __future__ import annotations

import platform
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    DAY_MS,
    AdmitBank,
    DualPvp,
    Envelope,
    Genesis,
    GenesisBank,
    Issue,
    Millis,
    ParticipantId,
    endorsement_message,
)
from bridge.errors import Refused
from bridge.settlement import SettlementEngine
from bridge.signing import endorse, sign_as_party, signed
from bridge.store.sqlite import SqliteStore

DEFAULT_PVPS = 20_000
DEFAULT_BATCH = 100
# (central bank, jurisdiction, currency): mBridge members along the corridor
CENTRAL_BANKS: tuple[tuple[str, str, str], ...] = (
    ("PBOC", "CN", "CNY"),
    ("HKMA", "HK", "HKD"),
    ("BOT", "TH", "THB"),
    ("CBUAE", "AE", "AED"),
)
BANKS_PER_CENTRAL_BANK = 2
START: Millis = 20_000 * DAY_MS + 9 * 3_600_000
VALID_FOR: Millis = 30 * DAY_MS
FUNDING = 10**15  # minor units issued to every bank: no PvP of the run can run short
_ALGORITHM = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class Bank:
    id: ParticipantId
    central_bank: ParticipantId
    currency: str


@dataclass(frozen=True, slots=True)
class BenchNetwork:
    """Keys, genesis and commercial banks of the benchmark corridor."""

    genesis: Genesis
    keys: dict[ParticipantId, PrivateKey]
    banks: tuple[Bank, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    """Everything signed before the clock starts: setup instructions and the PvPs."""

    network: BenchNetwork
    setup: tuple[Envelope, ...]
    pvps: tuple[Envelope, ...]


def build_network() -> BenchNetwork:
    """Four central banks, two commercial banks each, fresh keys."""
    keys: dict[ParticipantId, PrivateKey] = {}
    genesis_banks = []
    banks = []
    for central_bank, jurisdiction, currency in CENTRAL_BANKS:
        keys[central_bank] = PrivateKey.generate()
        genesis_banks.append(
            GenesisBank(central_bank, jurisdiction, keys[central_bank].public_key, currency, 2)
        )
        for number in range(1, BANKS_PER_CENTRAL_BANK + 1):
            bank = Bank(f"{jurisdiction}BANK{number}", central_bank, currency)
            keys[bank.id] = PrivateKey.generate()
            banks.append(bank)
    genesis = Genesis("bench-core", tuple(genesis_banks), quorum=3)
    return BenchNetwork(genesis, keys, tuple(banks))


def setup_envelopes(network: BenchNetwork) -> tuple[Envelope, ...]:
    """Admit every bank and fund it in its home currency."""
    until = START + VALID_FOR
    out: list[Envelope] = []
    for bank in network.banks:
        cb_key = network.keys[bank.central_bank]
        admit = AdmitBank(
            f"admit-{bank.id}", bank.central_bank, until, bank.id, network.keys[bank.id].public_key
        )
        out.append(signed(admit, cb_key))
        fund = Issue(f"fund-{bank.id}", bank.central_bank, until, bank.id, bank.currency, FUNDING)
        out.append(signed(fund, cb_key))
    return tuple(out)


def dual_pvp_envelope(network: BenchNetwork, body: DualPvp) -> Envelope:
    """Both banks sign the body; each bank's home central bank endorses its leg."""
    home = {bank.id: bank.central_bank for bank in network.banks}
    envelope = Envelope.of(body)
    for party in body.parties():
        envelope = sign_as_party(envelope, party, network.keys[party])
    for party in body.parties():
        envelope = endorse(envelope, party, home[party], network.keys[home[party]])
    return envelope


def build_pvps(network: BenchNetwork, count: int, seed: int = 7) -> tuple[Envelope, ...]:
    """`count` dual-signed PvPs between banks of different currencies, pseudo-random pairs."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in network.banks for b in network.banks if a.currency != b.currency]
    until = START + VALID_FOR
    out = []
    for number in range(count):
        a, b = pairs[rng.randrange(len(pairs))]
        pay_amount = rng.randrange(1_000, 10_000_000)
        rate = f"{rng.uniform(0.05, 20.0):.6f}"
        receive_amount = max(1, int(pay_amount * float(rate)))
        body = DualPvp(
            f"pvp-{number:08d}",
            a.id,
            until,
            b.id,
            a.currency,
            pay_amount,
            b.currency,
            receive_amount,
            rate,
            f"corridor invoice {number:08d}",
        )
        out.append(dual_pvp_envelope(network, body))
    return tuple(out)


def build_workload(count: int) -> Workload:
    network = build_network()
    return Workload(network, setup_envelopes(network), build_pvps(network, count))


def batches(items: Sequence[Envelope], size: int) -> list[Sequence[Envelope]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------- measurements


def time_core(
    workload: Workload, batch: int, check: SignatureCheck, directory: Path
) -> tuple[float, int]:
    """PvPs per second through `SettlementEngine.settle` into a fresh SQLite file, and the
    mean size of a stored entry (for the raw SQLite baseline)."""
    store = SqliteStore(directory / f"core-{check.value}.sqlite", synchronous="FULL")
    try:
        verifier = None if check is SignatureCheck.NONE else FastVerifier()
        engine = SettlementEngine.open(
            store, workload.network.genesis, verifier=verifier, check=check
        )
        _require_settled(engine.settle(workload.setup, START).results, "setup")
        chunks = batches(workload.pvps, batch)
        started = time.perf_counter()
        for number, chunk in enumerate(chunks, start=1):
            _require_settled(engine.settle(chunk, START + number).results, "pvp")
        elapsed = time.perf_counter() - started
        entry_size = _mean_entry_size(store)
    finally:
        store.close()
    return len(workload.pvps) / elapsed, entry_size


def _require_settled(results: Sequence[object], what: str) -> None:
    for result in results:
        if isinstance(result, Refused):
            raise RuntimeError(f"{what} instruction refused during the benchmark: {result}")


def _mean_entry_size(store: SqliteStore) -> int:
    entries = store.entries_from(1, limit=1_000_000)
    sizes = [len(data) for _, _, data in entries if b'"pvp_dual"' in data]
    return sum(sizes) // max(1, len(sizes))


RAW_SCHEMA = """
CREATE TABLE accounts (participant TEXT NOT NULL, currency TEXT NOT NULL,
    available INTEGER NOT NULL, held INTEGER NOT NULL,
    PRIMARY KEY (participant, currency)) WITHOUT ROWID;
CREATE TABLE entries (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""


def time_raw_sqlite(workload: Workload, batch: int, entry_size: int, directory: Path) -> float:
    """PvPs per second of the bare storage work: 4 UPDATEs + 1 INSERT each, `batch` per commit."""
    db = sqlite3.connect(directory / "raw.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(RAW_SCHEMA)
        db.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, 0)",
            [
                (bank.id, currency, FUNDING)
                for bank in workload.network.banks
                for *_, currency in CENTRAL_BANKS
            ],
        )
        legs = [_legs(envelope) for envelope in workload.pvps]
        payload = b"x" * entry_size
        debit = (
            "UPDATE accounts SET available = available - ? WHERE participant = ? AND currency = ?"
        )
        credit = (
            "UPDATE accounts SET available = available + ? WHERE participant = ? AND currency = ?"
        )
        started = time.perf_counter()
        seq = 0
        for first in range(0, len(legs), batch):
            db.execute("BEGIN IMMEDIATE")
            for a, b, pay_currency, pay_amount, receive_currency, receive_amount in legs[
                first : first + batch
            ]:
                db.execute(debit, (pay_amount, a, pay_currency))
                db.execute(credit, (pay_amount, b, pay_currency))
                db.execute(debit, (receive_amount, b, receive_currency))
                db.execute(credit, (receive_amount, a, receive_currency))
                seq += 1
                db.execute("INSERT INTO entries VALUES (?, ?)", (seq, payload))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        db.close()
    return len(legs) / elapsed


def _legs(envelope: Envelope) -> tuple[str, str, str, int, str, int]:
    body = envelope.body
    assert isinstance(body, DualPvp)
    return (
        body.sender,
        body.counterparty,
        body.pay_currency,
        body.pay_amount,
        body.receive_currency,
        body.receive_amount,
    )


def time_verify_only(workload: Workload) -> float:
    """PvPs per second of their two endorsement verifications, nothing else."""
    network = workload.network
    home = {bank.id: bank.central_bank for bank in network.banks}
    public = {
        cb: ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), network.keys[cb].public_key
        )
        for cb, *_ in CENTRAL_BANKS
    }
    checks: list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]] = []
    for envelope in workload.pvps:
        for party in envelope.body.parties():
            signature = envelope.party_signature(party)
            endorsement = envelope.endorsement(party)
            assert signature is not None
            assert endorsement is not None
            message = endorsement_message(envelope.body_bytes, signature.value)
            der = encode_dss_signature(
                int.from_bytes(endorsement.value[:32], "big"),
                int.from_bytes(endorsement.value[32:], "big"),
            )
            checks.append((public[home[party]], der, message))
    started = time.perf_counter()
    for key, der, message in checks:
        key.verify(der, message, _ALGORITHM)
    elapsed = time.perf_counter() - started
    return len(workload.pvps) / elapsed


# ---------------------------------------------------------------------------- the run


def run(pvps: int = DEFAULT_PVPS, batch: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Measure all four figures in this process and return them with their ratios."""
    if pvps < 1 or batch < 1:
        raise ValueError(f"pvps and batch must be positive: got {pvps}, {batch}")
    workload = build_workload(pvps)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        directory = Path(tmp)
        core, entry_size = time_core(workload, batch, SignatureCheck.ENDORSEMENTS, directory)
        nosig, _ = time_core(workload, batch, SignatureCheck.NONE, directory)
        raw = time_raw_sqlite(workload, batch, entry_size, directory)
    verify = time_verify_only(workload)
    return {
        "benchmark": "core",
        "n": pvps,
        "batch": batch,
        "central_banks": len(CENTRAL_BANKS),
        "banks": len(workload.network.banks),
        "entry_bytes": entry_size,
        "core_pvp_per_s": round(core, 1),
        "core_nosig_pvp_per_s": round(nosig, 1),
        "raw_sqlite_pvp_per_s": round(raw, 1),
        "verify_only_pvp_per_s": round(verify, 1),
        "storage_ratio": round(nosig / raw, 3),
        "sig_ratio": round(core / verify, 3),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def describe(figures: dict[str, Any]) -> str:
    """The figures as a few readable lines."""
    lines = [
        f"{figures['n']} dual-signed PvPs, batches of {figures['batch']}, "
        f"{figures['central_banks']} central banks, {figures['banks']} banks",
    ]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("core (endorsements verified)", lambda f: f"{f['core_pvp_per_s']:>10.0f} PvP/s"),
        ("core (no signature checks)", lambda f: f"{f['core_nosig_pvp_per_s']:>10.0f} PvP/s"),
        ("raw sqlite3, same shape", lambda f: f"{f['raw_sqlite_pvp_per_s']:>10.0f} PvP/s"),
        ("2 verifications only", lambda f: f"{f['verify_only_pvp_per_s']:>10.0f} PvP/s"),
        ("storage ratio", lambda f: f"{f['storage_ratio']:>10.3f}"),
        ("signature ratio", lambda f: f"{f['sig_ratio']:>10.3f}"),
    ]
    lines.extend(f"  {label:<30}{render(figures)}" for label, render in rows)
    return "\n".join(lines)


__all__ = ["DEFAULT_BATCH", "DEFAULT_PVPS", "describe", "run"]
