"""`cbdc-bridge bench core`: durable PvP throughput of the settlement core against its floors.

One process, one run, four figures over the same pre-signed dual-signed PvPs, measured
interleaved batch by batch (so drift of disk and CPU speed during the run hits all alike):

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

import gc
import platform
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
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
    Entry,
    Envelope,
    Genesis,
    GenesisBank,
    Issue,
    Millis,
    Outcome,
    ParticipantId,
    endorsement_message,
)
from bridge.errors import Refused
from bridge.rates import counter_amount
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
    batch: int


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
            f"admit-{bank.id}",
            bank.central_bank,
            until,
            bank.id,
            network.keys[bank.id].public_key,
            signed_at=START,
        )
        out.append(signed(admit, cb_key))
        fund = Issue(
            f"fund-{bank.id}",
            bank.central_bank,
            until,
            bank.id,
            bank.currency,
            FUNDING,
            signed_at=START,
        )
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


def dual_pvp_bodies(network: BenchNetwork, count: int, seed: int = 7) -> list[DualPvp]:
    """`count` dual PvP bodies between banks of different currencies, pseudo-random pairs."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in network.banks for b in network.banks if a.currency != b.currency]
    until = START + VALID_FOR
    out = []
    for number in range(count):
        a, b = pairs[rng.randrange(len(pairs))]
        pay_amount = rng.randrange(1_000, 10_000_000)
        rate = str(Decimal(rng.randrange(50_000, 20_000_000)).scaleb(-6))  # quoted to 6 places
        receive_amount = counter_amount(pay_amount, 2, rate, 2)  # >= 50: agrees with the rate
        out.append(
            DualPvp(
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
                signed_at=START,
            )
        )
    return out


def build_pvps(network: BenchNetwork, count: int, seed: int = 7) -> tuple[Envelope, ...]:
    """`count` dual-signed PvPs between banks of different currencies, pseudo-random pairs."""
    return tuple(dual_pvp_envelope(network, body) for body in dual_pvp_bodies(network, count, seed))


def build_workload(count: int, batch: int = DEFAULT_BATCH) -> Workload:
    network = build_network()
    return Workload(network, setup_envelopes(network), build_pvps(network, count), batch)


def batches(items: Sequence[Envelope], size: int) -> list[Sequence[Envelope]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------- measurements


class CoreRun:
    """A `SettlementEngine` over its own SQLite file (WAL, synchronous=FULL), set up and
    ready; `step` settles one batch and returns the seconds it took."""

    def __init__(self, workload: Workload, check: SignatureCheck, path: Path) -> None:
        self.store = SqliteStore(path, synchronous="FULL")
        verifier = None if check is SignatureCheck.NONE else FastVerifier()
        self.engine = SettlementEngine.open(
            self.store, workload.network.genesis, verifier=verifier, check=check
        )
        _require_settled(self.engine.settle(workload.setup, START).results, "setup")
        self.chunks = batches(workload.pvps, workload.batch)

    def step(self, index: int) -> float:
        started = time.perf_counter()
        results = self.engine.settle(self.chunks[index], START + 1 + index).results
        elapsed = time.perf_counter() - started
        _require_settled(results, "pvp")
        return elapsed

    def close(self) -> None:
        self.store.close()


def _require_settled(results: Sequence[object], what: str) -> None:
    for result in results:
        if isinstance(result, Refused):
            raise RuntimeError(f"{what} instruction refused during the benchmark: {result}")


RAW_SCHEMA = """
CREATE TABLE accounts (participant TEXT NOT NULL, currency TEXT NOT NULL,
    available INTEGER NOT NULL, held INTEGER NOT NULL,
    PRIMARY KEY (participant, currency)) WITHOUT ROWID;
CREATE TABLE entries (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""
_DEBIT = "UPDATE accounts SET available = available - ? WHERE participant = ? AND currency = ?"
_CREDIT = "UPDATE accounts SET available = available + ? WHERE participant = ? AND currency = ?"
Legs = tuple[str, str, str, int, str, int]


class RawSqliteRun:
    """The bare storage work of a PvP with sqlite3: four balance UPDATEs and one INSERT of an
    entry-sized row each, one transaction per batch, the store's pragmas."""

    def __init__(self, workload: Workload, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(RAW_SCHEMA)
        self.db.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, 0)",
            [(bank.id, cb[2], FUNDING) for bank in workload.network.banks for cb in CENTRAL_BANKS],
        )
        self.payload = b"x" * entry_size(workload)
        self.chunks = [
            [_legs(e) for e in chunk] for chunk in batches(workload.pvps, workload.batch)
        ]
        self.seq = 0

    def step(self, index: int) -> float:
        db, payload = self.db, self.payload
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for a, b, pay_currency, pay_amount, receive_currency, receive_amount in self.chunks[index]:
            db.execute(_DEBIT, (pay_amount, a, pay_currency))
            db.execute(_CREDIT, (pay_amount, b, pay_currency))
            db.execute(_DEBIT, (receive_amount, b, receive_currency))
            db.execute(_CREDIT, (receive_amount, a, receive_currency))
            self.seq += 1
            db.execute("INSERT INTO entries VALUES (?, ?)", (self.seq, payload))
        db.execute("COMMIT")
        return time.perf_counter() - started

    def close(self) -> None:
        self.db.close()


def _legs(envelope: Envelope) -> Legs:
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


def entry_size(workload: Workload) -> int:
    """Mean size of a PvP's log entry as the store keeps it (its canonical bytes)."""
    sizes = [
        len(Entry(seq, START, envelope, Outcome.SETTLED).canonical_bytes())
        for seq, envelope in enumerate(workload.pvps, start=len(workload.setup) + 1)
    ]
    return sum(sizes) // len(sizes)


class VerifyOnlyRun:
    """The two central bank endorsement checks of each PvP with `cryptography` alone: keys
    loaded and signatures DER-encoded beforehand, so only the verifications are timed."""

    def __init__(self, workload: Workload) -> None:
        network = workload.network
        home = {bank.id: bank.central_bank for bank in network.banks}
        public = {
            cb: ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), network.keys[cb].public_key
            )
            for cb, *_ in CENTRAL_BANKS
        }
        self.chunks: list[list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]] = []
        for chunk in batches(workload.pvps, workload.batch):
            checks = []
            for envelope in chunk:
                for party in envelope.body.parties():
                    signature = envelope.party_signature(party)
                    endorsement = envelope.endorsement(party)
                    assert signature is not None
                    assert endorsement is not None
                    message = endorsement_message(envelope.body_bytes, signature.value, endorsement)
                    assert message is not None
                    der = encode_dss_signature(
                        int.from_bytes(endorsement.value[:32], "big"),
                        int.from_bytes(endorsement.value[32:], "big"),
                    )
                    checks.append((public[home[party]], der, message))
            self.chunks.append(checks)

    def step(self, index: int) -> float:
        started = time.perf_counter()
        for key, der, message in self.chunks[index]:
            key.verify(der, message, _ALGORITHM)
        return time.perf_counter() - started

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- the run

FIGURES = (
    "core_pvp_per_s",
    "core_nosig_pvp_per_s",
    "raw_sqlite_pvp_per_s",
    "verify_only_pvp_per_s",
)


def measure(workload: Workload, directory: Path) -> dict[str, float]:
    """PvPs per second of each of the four runs, interleaved batch by batch.

    Batch i of every run executes before batch i + 1 of any, in an order that rotates each
    batch, so drift in disk or CPU speed during the run weighs on all four figures alike."""
    runs: list[CoreRun | RawSqliteRun | VerifyOnlyRun] = [
        CoreRun(workload, SignatureCheck.ENDORSEMENTS, directory / "core.sqlite"),
        CoreRun(workload, SignatureCheck.NONE, directory / "core-nosig.sqlite"),
        RawSqliteRun(workload, directory / "raw.sqlite"),
        VerifyOnlyRun(workload),
    ]
    seconds = [0.0] * len(runs)
    try:
        for index in range((len(workload.pvps) + workload.batch - 1) // workload.batch):
            for turn in range(len(runs)):
                which = (index + turn) % len(runs)
                seconds[which] += runs[which].step(index)
    finally:
        for finished in runs:
            finished.close()
    return {name: len(workload.pvps) / spent for name, spent in zip(FIGURES, seconds, strict=True)}


def run(pvps: int = DEFAULT_PVPS, batch: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Measure all four figures in this process and return them with their ratios."""
    if pvps < 1 or batch < 1:
        raise ValueError(f"pvps and batch must be positive: got {pvps}, {batch}")
    workload = build_workload(pvps, batch)
    # the pre-signed workload is scaffolding, not engine state: keep it out of the
    # collector's full passes, as a server's transient requests would be
    gc.collect()
    gc.freeze()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
            rates = measure(workload, Path(tmp))
    finally:
        gc.unfreeze()
    return {
        "benchmark": "core",
        "n": pvps,
        "batch": batch,
        "central_banks": len(CENTRAL_BANKS),
        "banks": len(workload.network.banks),
        "entry_bytes": entry_size(workload),
        **{name: round(rate, 1) for name, rate in rates.items()},
        "storage_ratio": round(rates["core_nosig_pvp_per_s"] / rates["raw_sqlite_pvp_per_s"], 3),
        "sig_ratio": round(rates["core_pvp_per_s"] / rates["verify_only_pvp_per_s"], 3),
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
