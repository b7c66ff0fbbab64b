"""`cbdc-bridge bench verify`: offline log verification against raw crypto on the same data.

The log is a generated sample (`analysis.sample`, real P-256 signatures) cached in a
temporary folder keyed by its size and the generator's and domain model's source, made in a
child process so its memory does not count here. One run then measures, in this process and
on the same file:

- verify: `bridge.log.verify.verify_log`, everything included (reading, decoding, canonical
  form, chain, Merkle roots, replay with every signature, attestations, conservation, stored
  state);
- baseline: SHA-256 of every entry (its Merkle leaf hash) plus P-256 verification of every
  signature and endorsement in the entries and of every attestation, with cryptography's
  OpenSSL verifier. Only hashing and verifying are timed: reading and preparing the messages,
  keys and DER signatures happen outside the clock.

The baseline runs on half of the chunks (of about 5,000 entries) before the verification and
on the other half after it, so a machine whose load drifts during the run weighs on both alike.
(Interleaving them block by block was tried and rejected: the baseline's bursts slowed the
interpreter-bound verifier by about 25%, an artefact of the measurement.) Times are CPU seconds
of this process (`time.process_time`), and wall-clock seconds in the `*_wall` figures; both
phases are single-threaded, so on an idle machine the two agree.

ratio = verified entries per CPU-second / baseline entries per CPU-second; goal >= 0.5. Peak RSS
is this process's high-water mark (the generator runs in a child), goal under 500 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import analysis.sample as sample_module
import bridge.domain as domain_module
from bridge.domain import (
    ATTESTATION_DOMAIN,
    CENTRAL_BANK_KINDS,
    Genesis,
    Signature,
    endorsement_message,
    party_message,
)
from bridge.log.source import SqliteSource
from bridge.log.verify import verify_log

GOAL_RATIO = 0.5
GOAL_PEAK_RSS_MIB = 500
BENCH_BLOCK_SIZE = 500
CHUNK = 5_000
_ALGORITHM = ec.ECDSA(hashes.SHA256())
_OUTCOME_MARK = b',"outcome":"'

Status = Callable[[str], None]


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "cbdc-bridge-bench"


def cached_log_path(entries: int, directory: Path) -> Path:
    """Cache file name: size, block size and a digest of the generator's source and of the
    domain model's (an entry format change, such as a new field or signature layout, must not
    leave a log of the old format in use, which would fail verification)."""
    digest = hashlib.sha256()
    for source in (sample_module.__file__, domain_module.__file__):
        assert source is not None
        digest.update(Path(source).read_bytes())
    source_digest = digest.hexdigest()[:10]
    return directory / f"verify-log-{entries}-b{BENCH_BLOCK_SIZE}-{source_digest}.sqlite"


def ensure_log(
    entries: int, directory: Path, *, regenerate: bool, status: Status
) -> tuple[Path, float]:
    """The cached sample log of `entries` entries (generated in a child process if missing)."""
    path = cached_log_path(entries, directory)
    if path.exists() and not regenerate:
        return path, 0.0
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for stale in (path, partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        stale.unlink(missing_ok=True)
    status(f"generating a {entries:,}-entry sample log at {path} (cached for later runs)")
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "analysis.sample",
        "--entries",
        str(entries),
        "--block-size",
        str(BENCH_BLOCK_SIZE),
        "--out",
        str(partial),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    os.replace(partial, path)
    return path, time.perf_counter() - started


# ---------------------------------------------------------------------------- baseline


class _Baseline:
    """Times SHA-256 of each entry and P-256 verification of each signature, nothing else."""

    def __init__(self, genesis: Genesis) -> None:
        self.keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for bank in genesis.central_banks:
            self._admit(bank.id, bank.public_key)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.entries = 0
        self.signatures = 0
        self.failed = 0

    def _admit(self, participant: str, public_key: bytes) -> None:
        self.keys[participant] = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), public_key
        )

    def _prepare(self, data: bytes) -> list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]:
        """(key, message, DER signature) of every signature in one entry (untimed)."""
        raw = json.loads(data)
        body_bytes = data[len(b'{"body":') : data.index(_OUTCOME_MARK)]
        body = raw["body"]
        out = []
        party_values: dict[str, bytes] = {}
        for fields in raw["sigs"]:
            signer, endorses, value_hex = fields[:3]
            value = bytes.fromhex(value_hex)
            if endorses:
                index, size, path = fields[3:]
                place = Signature(
                    signer, value, endorses, index, size, tuple(bytes.fromhex(h) for h in path)
                )
                found = endorsement_message(body_bytes, party_values[endorses], place)
                assert found is not None, "an endorsement with no valid Merkle path"
                message = found
            else:
                party_values[signer] = value
                message = party_message(body_bytes)
            der = encode_dss_signature(
                int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big")
            )
            out.append((self.keys[signer], message, der))
        if body["kind"] == "admit_bank":
            self._admit(body["bank"], bytes.fromhex(body["public_key"]))
        assert body["kind"] in CENTRAL_BANK_KINDS or len(out) % 2 == 0
        return out

    def learn_keys(self, entries: list[bytes]) -> None:
        """Admit the banks a chunk admits, without measuring anything."""
        for data in entries:
            if b'"kind":"admit_bank"' in data:
                self._prepare(data)

    def run_chunk(
        self,
        entries: list[bytes],
        attestations: list[tuple[str, bytes, bytes]],
    ) -> None:
        prepared = [(data, self._prepare(data)) for data in entries]
        signed = [
            (
                self.keys[bank],
                ATTESTATION_DOMAIN + block_hash,
                encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                ),
            )
            for bank, block_hash, signature in attestations
        ]
        sha256 = hashlib.sha256
        started, started_cpu = time.perf_counter(), time.process_time()
        for data, signatures in prepared:
            sha256(b"\x00" + data).digest()
            for key, message, der in signatures:
                try:
                    key.verify(der, message, _ALGORITHM)
                except InvalidSignature:
                    self.failed += 1
        for key, message, der in signed:
            try:
                key.verify(der, message, _ALGORITHM)
            except InvalidSignature:
                self.failed += 1
        self.seconds += time.perf_counter() - started
        self.cpu_seconds += time.process_time() - started_cpu
        self.entries += len(prepared)
        self.signatures += sum(len(s) for _, s in prepared) + len(signed)


def _chunks(path: Path) -> Iterator[tuple[list[bytes], list[tuple[str, bytes, bytes]]]]:
    """The log in chunks of about CHUNK entries, each with the attestations of its blocks."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        blocks = db.execute(
            "SELECT height, first_seq + entry_count - 1 FROM blocks ORDER BY height"
        )
        first_height, first_seq = 1, 1
        for height, last_seq in blocks.fetchall():
            if last_seq - first_seq + 1 < CHUNK:
                continue
            yield _chunk(db, first_height, height, first_seq, last_seq)
            first_height, first_seq = height + 1, last_seq + 1
        yield _chunk(db, first_height, 1 << 62, first_seq, 1 << 62)
    finally:
        db.close()


def _chunk(
    db: sqlite3.Connection, first_height: int, last_height: int, first_seq: int, last_seq: int
) -> tuple[list[bytes], list[tuple[str, bytes, bytes]]]:
    entries = [
        bytes(row[0])
        for row in db.execute(
            "SELECT data FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq", (first_seq, last_seq)
        )
    ]
    attestations = [
        (bank, bytes(block_hash), bytes(signature))
        for bank, block_hash, signature in db.execute(
            "SELECT central_bank, block_hash, signature FROM attestations "
            "WHERE height BETWEEN ? AND ? ORDER BY height, central_bank",
            (first_height, last_height),
        )
    ]
    return entries, attestations


def measure_baseline(baseline: _Baseline, path: Path, half: int) -> None:
    """Run the baseline on every other chunk of the log (`half` 0: even chunks, 1: odd ones).

    Keys of admitted banks are learned from every chunk, timed or not, in log order."""
    for number, (entries, attestations) in enumerate(_chunks(path)):
        if number % 2 == half:
            baseline.run_chunk(entries, attestations)
        else:
            baseline.learn_keys(entries)


# ---------------------------------------------------------------------------- run


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(
    entries: int = 1_000_000,
    *,
    directory: Path | None = None,
    regenerate: bool = False,
    status: Status | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the log, then measure baseline and verification in this process."""
    say = status or (lambda message: None)
    path, generation_seconds = ensure_log(
        entries, directory or cache_dir(), regenerate=regenerate, status=say
    )
    with SqliteSource(path) as source:
        genesis = source.genesis()
    baseline = _Baseline(genesis)
    say("baseline, first half: SHA-256 and P-256 verification of every other chunk")
    measure_baseline(baseline, path, 0)
    say("verify: the full offline verification")
    with SqliteSource(path) as source:
        report = verify_log(source)
    say("baseline, second half: the other chunks")
    measure_baseline(baseline, path, 1)
    verify_cpu, verify_seconds = report.cpu_seconds, report.seconds
    baseline_rate = _rate(baseline.entries, baseline.cpu_seconds)
    verify_rate = _rate(report.entries, verify_cpu)
    ratio = verify_rate / baseline_rate if baseline_rate else 0.0
    baseline_wall = _rate(baseline.entries, baseline.seconds)
    verify_wall = _rate(report.entries, verify_seconds)
    peak = peak_rss_mib()
    return {
        "benchmark": "verify",
        "log": str(path),
        "log_mib": round(path.stat().st_size / 2**20, 1),
        "generated_seconds": round(generation_seconds, 1),
        "entries": report.entries,
        "blocks": report.blocks,
        "signatures": report.signatures,
        "verified": report.ok,
        "baseline_entries": baseline.entries,
        "failure": None if report.ok else str(report.failures[0]),
        "verify_cpu_seconds": round(verify_cpu, 2),
        "verify_entries_per_s": round(verify_rate, 1),
        "baseline_cpu_seconds": round(baseline.cpu_seconds, 2),
        "baseline_entries_per_s": round(baseline_rate, 1),
        "baseline_signatures": baseline.signatures,
        "baseline_signatures_per_s": round(_rate(baseline.signatures, baseline.cpu_seconds), 1),
        "ratio": round(ratio, 3),
        "verify_wall_seconds": round(verify_seconds, 2),
        "baseline_wall_seconds": round(baseline.seconds, 2),
        "ratio_wall": round(verify_wall / baseline_wall, 3) if baseline_wall else 0.0,
        "goal_ratio": GOAL_RATIO,
        "peak_rss_mib": round(peak, 1),
        "goal_peak_rss_mib": GOAL_PEAK_RSS_MIB,
        "meets_goals": report.ok and ratio >= GOAL_RATIO and peak < GOAL_PEAK_RSS_MIB,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def describe(figures: dict[str, Any]) -> str:
    lines = [
        f"log: {figures['log']} ({figures['log_mib']} MiB, {figures['entries']:,} entries, "
        f"{figures['blocks']:,} blocks, {figures['signatures']:,} signatures)",
        f"verify:   {figures['verify_entries_per_s']:>10,.1f} entries/CPU-s "
        f"({figures['verify_cpu_seconds']} CPU s, {figures['verify_wall_seconds']} s wall, "
        f"verified: {figures['verified']})",
        f"baseline: {figures['baseline_entries_per_s']:>10,.1f} entries/CPU-s "
        f"({figures['baseline_cpu_seconds']} CPU s of SHA-256 + P-256 verify, "
        f"{figures['baseline_signatures_per_s']:,.0f} signatures/CPU-s)",
        f"ratio:    {figures['ratio']:.3f} (goal >= {figures['goal_ratio']}; wall clock "
        f"{figures['ratio_wall']:.3f})",
        f"peak RSS: {figures['peak_rss_mib']} MiB (goal < {figures['goal_peak_rss_mib']} MiB)",
        f"meets goals: {figures['meets_goals']}",
    ]
    if figures["failure"]:
        lines.append(f"verification failure: {figures['failure']}")
    return "\n".join(lines)
