"""The invariants a campaign checks after each scenario, from outside the bridge.

Every check reads what any central bank could read: the bridge's store file (read-only), its
gRPC API called as a central bank node, the bank-facing API of each central bank node, and
`cbdc-bridge log verify`. The durable record of the load clients says what was acknowledged.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import ProposePvp
from participants.central_bank.channels import bridge_channel
from participants.network_config import NetworkConfig

SERVICE = "/bridge.v1.CentralBank/"
RPC_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged instruction from a load client's record."""

    rpc: str
    node: str
    sender: str
    instruction_id: str
    seq: int
    outcome: str
    request: bytes


def read_acks(records: Iterable[Path]) -> list[Ack]:
    """Every acknowledged instruction in the records, once per (sender, id); a torn last line
    (the client was killed while writing it) is not an acknowledgement."""
    acks: dict[tuple[str, str], Ack] = {}
    for item in _record_lines(records):
        if not item.get("ack"):
            continue
        key = (item["sender"], item["id"])
        ack = Ack(
            item["rpc"],
            item["node"],
            item["sender"],
            item["id"],
            int(item["seq"]),
            item["outcome"],
            base64.b64decode(item["request"]),
        )
        if key in acks and acks[key].seq != ack.seq:
            # the same id acknowledged at two places: counted by `logged_exactly_once`
            acks[(ack.sender, f"{ack.instruction_id}\x00{ack.seq}")] = ack
            continue
        acks.setdefault(key, ack)
    return list(acks.values())


def longest_call(records: Iterable[Path]) -> float:
    """The longest single call (seconds) any record line reports: a client never waits
    longer than its deadline, whatever the fault."""
    longest = 0.0
    for item in _record_lines(records):
        try:
            longest = max(longest, float(item.get("took", 0.0)))
        except (ValueError, TypeError):
            continue
    return longest


def read_answers(records: Iterable[Path]) -> dict[str, int]:
    """How many answers of each kind the records hold: `ack`, a final refusal's reason, or
    `not_decided:REASON` for an attempt that was resent."""
    counts: dict[str, int] = {}
    for item in _record_lines(records):
        what = "ack" if item.get("ack") else str(item.get("reason"))
        if item.get("retry"):
            what = f"not_decided:{what}"
        counts[what] = counts.get(what, 0) + 1
    return counts


def _record_lines(records: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every whole line of the records that exist, as an object; a torn last line (the client
    was killed while writing it) is passed over."""
    for path in records:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item


class StoreReader:
    """Read-only SQL on the bridge's store: a SQLite file or a postgresql:// URL (the tables
    and columns the checks read are the same in both)."""

    def __init__(self, source: str) -> None:
        self.postgres = source.startswith(("postgresql://", "postgres://"))
        self._db: Any = (
            psycopg.connect(source, autocommit=True)
            if self.postgres
            else sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
        )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def close(self) -> None:
        self._db.close()


@dataclass
class CheckReport:
    """What one round of checks found; `passed` only when every figure is as it must be."""

    acknowledged: int = 0
    lost: int = 0
    misplaced: int = 0
    doubled: int = 0
    resubmitted: int = 0
    resubmit_failures: list[str] = field(default_factory=list)
    conservation_failures: list[str] = field(default_factory=list)
    replica_disagreements: int = 0
    replicas_behind: list[str] = field(default_factory=list)
    stuck_holds: int = 0
    expiries_checked: int = 0
    expiries_wrong: int = 0
    log_verified: bool | None = None
    log_verify_detail: str = ""
    memory_over_bound: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.misplaced == 0
            and self.doubled == 0
            and not self.resubmit_failures
            and not self.conservation_failures
            and self.replica_disagreements == 0
            and self.stuck_holds == 0
            and self.expiries_wrong == 0
            and self.log_verified is not False
            and not self.memory_over_bound
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "misplaced": self.misplaced,
            "doubled": self.doubled,
            "resubmitted": self.resubmitted,
            "resubmit_failures": self.resubmit_failures[:5],
            "conservation_failures": self.conservation_failures,
            "replica_disagreements": self.replica_disagreements,
            "replicas_behind": self.replicas_behind,
            "stuck_holds": self.stuck_holds,
            "expiries_checked": self.expiries_checked,
            "expiries_wrong": self.expiries_wrong,
            "log_verified": self.log_verified,
            "log_verify_detail": self.log_verify_detail,
            "memory_over_bound": self.memory_over_bound,
        }


class Checker:
    """Runs the checks against a live network; remembers what it already resubmitted."""

    def __init__(self, config: NetworkConfig, db: str) -> None:
        self.config = config
        self.db = db
        self._bridge_channel = bridge_channel(config, config.central_banks[0].id)
        self.bridge = bridge_grpc.BridgeLedgerStub(self._bridge_channel)
        self._channels = {cb.id: grpc.insecure_channel(cb.address) for cb in config.central_banks}
        self._resubmitted: set[tuple[str, str]] = set()

    def close(self) -> None:
        self._bridge_channel.close()
        for channel in self._channels.values():
            channel.close()

    def _store(self) -> StoreReader:
        return StoreReader(self.db)

    # ------------------------------------------------------------------ acknowledged once

    def logged_exactly_once(self, acks: list[Ack], report: CheckReport) -> None:
        """Every acknowledged instruction is in the log once, at the seq it was acked with."""
        report.acknowledged = len(acks)
        db = self._store()
        try:
            for ack in acks:
                rows = db.execute(
                    "SELECT seq FROM entries WHERE sender=? AND instruction_id=?",
                    (ack.sender, ack.instruction_id.split("\x00")[0]),
                ).fetchall()
                if not rows:
                    report.lost += 1
                elif len(rows) > 1:
                    report.doubled += len(rows) - 1
                elif rows[0][0] != ack.seq:
                    report.misplaced += 1
        finally:
            db.close()

    def resubmit(self, acks: list[Ack], report: CheckReport) -> None:
        """Each acknowledged instruction (not yet resent) sent again, byte for byte, to the
        node that acknowledged it: a duplicate with the same seq, never a second settlement."""
        fresh = [a for a in acks if (a.sender, a.instruction_id) not in self._resubmitted]

        def one(ack: Ack) -> str | None:
            method = self._channels[ack.node].unary_unary(
                SERVICE + ack.rpc, request_serializer=None, response_deserializer=None
            )
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = types.InstructionStatus.FromString(
                        method(ack.request, timeout=RPC_TIMEOUT)
                    )
                    break
                except grpc.RpcError as error:
                    if time.monotonic() > deadline:
                        return f"{ack.sender}/{ack.instruction_id}: {error.code().name}"
                    time.sleep(0.3)
            if not answer.receipt.duplicate:
                report.doubled += 1
                return f"{ack.sender}/{ack.instruction_id}: settled again at {answer.receipt.seq}"
            if answer.receipt.seq != ack.seq:
                return f"{ack.sender}/{ack.instruction_id}: seq {answer.receipt.seq} != {ack.seq}"
            return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            for ack, failure in zip(fresh, pool.map(one, fresh), strict=True):
                report.resubmitted += 1
                if failure is None:
                    self._resubmitted.add((ack.sender, ack.instruction_id))
                else:
                    report.resubmit_failures.append(failure)

    # ------------------------------------------------------------------ ledger state

    def conservation(self, report: CheckReport) -> None:
        """Per currency: issued - redeemed == the sum of every available and held balance."""
        participants = self.bridge.ListParticipants(
            bridge_pb.ListParticipantsRequest(), timeout=RPC_TIMEOUT
        ).participants
        totals: dict[str, int] = {}
        for participant in participants:
            accounts = self.bridge.GetBalances(
                bridge_pb.GetBalancesRequest(participant=participant.id), timeout=RPC_TIMEOUT
            ).accounts
            for account in accounts:
                if account.available < 0 or account.held < 0:
                    report.conservation_failures.append(
                        f"{account.participant} {account.currency}: negative balance"
                    )
                totals[account.currency] = (
                    totals.get(account.currency, 0) + account.available + account.held
                )
        for cb in self.config.central_banks:
            supply = self.bridge.GetCurrencySupply(
                types.CurrencySupplyRequest(currency=cb.currency), timeout=RPC_TIMEOUT
            )
            outstanding = supply.issued - supply.redeemed
            if totals.get(cb.currency, 0) != outstanding:
                report.conservation_failures.append(
                    f"{cb.currency}: balances {totals.get(cb.currency, 0)} != "
                    f"issued - redeemed {outstanding}"
                )

    def holds_and_expiries(self, acks: list[Ack], report: CheckReport, grace_ms: int) -> None:
        """No PvP still holds funds past its deadline; each expired PvP was expired once, by
        the bridge, at a ledger time not before its deadline."""
        db = self._store()
        try:
            (ledger_time,) = db.execute("SELECT COALESCE(MAX(time), 0) FROM blocks").fetchone()
            for ack in acks:
                if ack.rpc != "ProposePvp":
                    continue
                proposal = wire.envelope_from_proto(
                    types.SignedInstruction.FromString(ack.request)
                ).body
                assert isinstance(proposal, ProposePvp)
                status = self.bridge.GetPvp(
                    bridge_pb.GetPvpRequest(proposer=ack.sender, pvp_id=ack.instruction_id),
                    timeout=RPC_TIMEOUT,
                )
                if status.status == types.OUTCOME_HELD:
                    if ledger_time > proposal.settle_by + grace_ms:
                        report.stuck_holds += 1
                    continue
                if status.status != types.OUTCOME_EXPIRED:
                    continue
                report.expiries_checked += 1
                row = db.execute(
                    "SELECT kind, time, sender FROM entries WHERE seq=?", (status.closed_seq,)
                ).fetchone()
                if row is None or row[0] != "pvp_expire" or row[1] < proposal.settle_by:
                    report.expiries_wrong += 1
        finally:
            db.close()

    def replicas(self, report: CheckReport, timeout: float) -> None:
        """Every central bank node attests the bridge's sealed height, over the same hashes."""
        sealed = self.bridge.GetFinality(
            bridge_pb.GetFinalityRequest(), timeout=RPC_TIMEOUT
        ).sealed_height
        wanted = {cb.id for cb in self.config.central_banks}
        deadline = time.monotonic() + timeout
        while True:
            db = self._store()
            try:
                reached = dict(
                    db.execute(
                        "SELECT central_bank, MAX(height) FROM attestations GROUP BY central_bank"
                    ).fetchall()
                )
                (mismatched,) = db.execute(
                    "SELECT COUNT(*) FROM attestations a JOIN blocks b ON a.height = b.height "
                    "WHERE a.block_hash != b.hash"
                ).fetchone()
            finally:
                db.close()
            behind = sorted(cb for cb in wanted if reached.get(cb, 0) < sealed)
            if not behind or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        report.replicas_behind = behind
        report.replica_disagreements = len(behind) + int(mismatched)

    def log_verify(self, report: CheckReport) -> None:
        """`cbdc-bridge log verify --json` on the bridge's store passes."""
        result = subprocess.run(
            [sys.executable, "-m", "participants.cli", "log", "verify", self.db, "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        report.log_verified = result.returncode == 0
        try:
            verdict = json.loads(result.stdout.strip().splitlines()[-1])
            report.log_verify_detail = (
                f"{verdict.get('blocks')} blocks, {verdict.get('entries')} entries"
                if report.log_verified
                else json.dumps(verdict.get("failures", verdict))[:300]
            )
        except (ValueError, IndexError):
            report.log_verify_detail = (result.stderr or result.stdout)[-300:]
