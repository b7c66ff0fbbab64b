"""After a load run: did the ledger settle exactly what Locust saw settle, and does the log verify?

Every instruction a load run sends has an id starting with the run id (`<run id>.`), and every
one the bank saw settle fired one Locust `settlement` event. So the count of `settlement`
requests in the run's stats must equal the number of entries in the bridge's log whose
instruction id carries the run id and whose outcome is SETTLED: a settlement Locust counted
that the ledger lacks, or one the ledger holds that no bank saw, fails the check.

The ledger is read from the bridge's SQLite file, read-only. The log is verified offline by
`bridge.log.verify` (hash chain, Merkle roots, every signature, replay, conservation,
attestations); that dependency is isolated in `verify_settlement_log`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from participants.network_config import NetworkConfig

__all__ = ["CrossCheck", "crosscheck", "ledger_settled", "verify_settlement_log"]


@dataclass(frozen=True, slots=True)
class CrossCheck:
    run_id: str
    locust_settled: int
    ledger_settled: int
    log_ok: bool
    log_summary: str

    @property
    def counts_match(self) -> bool:
        return self.locust_settled == self.ledger_settled

    @property
    def ok(self) -> bool:
        return self.counts_match and self.log_ok

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "locust_settled": self.locust_settled,
            "ledger_settled": self.ledger_settled,
            "counts_match": self.counts_match,
            "log_verified": self.log_ok,
            "log": self.log_summary,
            "ok": self.ok,
        }

    def describe(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"cross-check {verdict}: run {self.run_id}: Locust saw {self.locust_settled} "
            f"settlements, the ledger holds {self.ledger_settled}; log: {self.log_summary}"
        )


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)


def ledger_settled(db: Path, run_id: str) -> int:
    """SETTLED entries whose instruction id starts with '<run_id>.'."""
    prefix = f"{run_id}."
    connection = _read_only(db)
    try:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM entries WHERE outcome = 'SETTLED' "
            "AND substr(instruction_id, 1, ?) = ?",
            (len(prefix), prefix),
        ).fetchone()
    finally:
        connection.close()
    return int(count)


def verify_settlement_log(network: Path) -> tuple[bool, str]:
    """Verify the bridge's whole log offline; (ok, one-line summary)."""
    from bridge.log.source import open_source
    from bridge.log.verify import verify_log

    config = NetworkConfig.load(network)
    with open_source(config.bridge_db) as source:
        report = verify_log(source, trusted_genesis=config.genesis())
    if report.ok:
        return True, (
            f"verified {report.blocks} blocks, {report.entries} entries, "
            f"{report.signatures} signatures, {report.attestations} attestations "
            f"({report.final_blocks} blocks final) in {report.seconds:.1f} s"
        )
    return False, f"FAILED: {report.failure}"


def crosscheck(
    network: Path, run_id: str, locust_settled: int, *, verify: bool = True
) -> CrossCheck:
    """Compare Locust's settlement count with the ledger's and verify the log."""
    config = NetworkConfig.load(network)
    settled = ledger_settled(config.bridge_db, run_id)
    log_ok, summary = verify_settlement_log(network) if verify else (True, "not verified")
    return CrossCheck(run_id, locust_settled, settled, log_ok, summary)
