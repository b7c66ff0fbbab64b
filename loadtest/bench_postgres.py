"""`cbdc-bridge bench postgres`: the bridge on PostgreSQL vs pgbench on the same server.

One run, one machine, one throw-away PostgreSQL server (fsync on):

1. **bridge**: a network whose bridge processes (`--bridges`, default 2: one leads, one stands
   by) share a database on that server; pre-signed dual-signed PvPs are streamed through every
   central bank node (as `bench stream` does), in two halves with pgbench (3) run between
   them: `bridge_pvp_per_s`;
2. **failover**: `--kills` times, the leading bridge process is SIGKILLed while a bank pays
   through its central bank node; the seconds from the kill to the first payment settled
   after it (another process leads, the central bank link found it) give `failover_s_p50`
   and `failover_s_max`. The killed process is restarted (as a standby) each time. Then the
   whole log, written across the kills, is verified and the settled count is compared with
   the database;
3. **pgbench**, between the bridge's two halves: a custom script of PvP-shaped SQL, one
   transaction per PvP as the bridge would write it alone: four balance updates (both legs)
   and one row into a table shaped like the bridge's `entries` (same columns, primary key,
   unique (sender, instruction id) index and foreign key to a block), of the average size of
   the entries the bridge's first half wrote; as many clients as the bridge run had streams:
   `pgbench_tps`. `ratio` is `bridge_pvp_per_s / pgbench_tps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge.crypto import PrivateKey
from bridge.domain import Envelope, Pay
from bridge.signing import sign_as_party
from loadtest.bench_stream import DEFAULT_BATCH, presign, stream_pvps
from loadtest.funding import fund_banks
from loadtest.pgserver import PostgresServer, binaries, start_server
from loadtest.settings import new_run_id
from participants.launcher import Network, NodeProcess, prepare_network

__all__ = ["PostgresBenchSettings", "describe", "run"]

ENTRY_BYTES = 900  # one dual-signed PvP entry's canonical bytes, if the bridge run wrote none


def pgbench_script(entry_bytes: int) -> str:
    """One PvP as SQL: both legs' balance updates, then its entry row."""
    return f"""\\set a random(1, :accounts)
\\set b random(1, :accounts)
BEGIN;
UPDATE bench_accounts SET available = available - 700000 WHERE id = :a AND currency = 'CNY';
UPDATE bench_accounts SET available = available + 700000 WHERE id = :b AND currency = 'CNY';
UPDATE bench_accounts SET available = available - 756000 WHERE id = :b AND currency = 'HKD';
UPDATE bench_accounts SET available = available + 756000 WHERE id = :a AND currency = 'HKD';
INSERT INTO bench_entries (height, sender, instruction_id, kind, outcome, time, body_hash, data)
VALUES (1, 'BANK' || :a, gen_random_uuid()::text, 'dual_pvp', 'SETTLED', :b,
        decode(repeat('ab', 32), 'hex'), convert_to(repeat('x', {entry_bytes}), 'UTF8'));
END;
"""


PGBENCH_ACCOUNTS = 1_000  # spread wide: clients rarely wait on each other's rows


@dataclass(frozen=True, slots=True)
class PostgresBenchSettings:
    pvps: int = 10_000
    window: int = 256
    batch: int = DEFAULT_BATCH  # PvPs per SubmitStream message (1: one per message)
    pgbench_seconds: float = 10.0
    bridges: int = 2
    kills: int = 5
    signers: int = 2


def run(settings: PostgresBenchSettings) -> dict[str, Any]:
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    server = start_server(bin_dir)
    try:
        with _network(server, settings.bridges) as network:
            bridge, pgbench = _interleaved(network, server, bin_dir, settings)
            failovers = [_failover_once(network) for _ in range(settings.kills)]
            verified, bridge["log"] = _verify(network)  # the whole log, across the kills
            bridge["ok"] = bridge["ok"] and verified
        streams = bridge["streams"]  # one SubmitStream per central bank node
    finally:
        server.remove()
    rate = bridge["bridge_pvp_per_s"]
    ratio = rate / pgbench["tps"] if pgbench["tps"] else 0.0
    return {
        "pgbench_tps": pgbench["tps"],
        "bridge_pvp_per_s": rate,
        "ratio": round(ratio, 3),
        "failover_s_p50": round(statistics.median(failovers), 2) if failovers else None,
        "failover_s_max": round(max(failovers), 2) if failovers else None,
        "failover_s": [round(s, 2) for s in failovers],
        "goals_met": {
            "ratio_ge_0_5": ratio >= 0.5,
            "failover_max_le_5_s": bool(failovers) and max(failovers) <= 5.0,
        },
        "pgbench": pgbench,
        "bridge": bridge,
        "settings": {
            "clients": streams,
            "pvps": settings.pvps,
            "window": settings.window,
            "batch": settings.batch,
            "bridges": settings.bridges,
            "kills": settings.kills,
            "cpus": os.cpu_count(),
            "fsync": "on",
        },
        "ok": bridge["ok"] and len(failovers) == settings.kills,
    }


# ---------------------------------------------------------------------------- pgbench


def run_pgbench(
    server: PostgresServer,
    bin_dir: Path,
    *,
    clients: int,
    seconds: float,
    entry_bytes: int = ENTRY_BYTES,
) -> dict[str, Any]:
    """The PvP-shaped script under pgbench against a fresh database: transactions per second."""
    url = server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_accounts (id int, currency text, available bigint NOT NULL"
            " CHECK (available >= 0), held bigint NOT NULL DEFAULT 0,"
            " PRIMARY KEY (id, currency))"
        )
        # the bridge's entries table: the same columns, keys and index
        conn.execute("CREATE TABLE bench_blocks (height bigint PRIMARY KEY)")
        conn.execute("INSERT INTO bench_blocks VALUES (1)")
        conn.execute(
            "CREATE TABLE bench_entries (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " height bigint NOT NULL REFERENCES bench_blocks (height),"
            " sender text NOT NULL, instruction_id text NOT NULL, kind text NOT NULL,"
            " outcome text NOT NULL, time bigint NOT NULL, body_hash bytea NOT NULL,"
            " data bytea NOT NULL, UNIQUE (sender, instruction_id))"
        )
        conn.execute(
            "INSERT INTO bench_accounts (id, currency, available)"
            " SELECT i, c, 1000000000000 FROM generate_series(1, %s) i,"
            " unnest(ARRAY['CNY', 'HKD']) c",
            (PGBENCH_ACCOUNTS,),
        )
    directory = Path(tempfile.mkdtemp(prefix="pgbench-"))
    try:
        script = directory / "pvp.sql"
        script.write_text(pgbench_script(entry_bytes))
        command = [
            str(bin_dir / "pgbench"),
            "-n",  # no vacuum of the standard tables: there are none
            "-f",
            str(script),
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(max(1, round(seconds))),
            "-D",
            f"accounts={PGBENCH_ACCOUNTS}",
            "--max-tries=20",  # a deadlock between two clients' legs is retried, as it would be
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    return {
        "tps": round(float(match.group(1)), 1) if match else 0.0,
        "clients": clients,
        "seconds": seconds,
        "entry_bytes": entry_bytes,
        "failed_transactions": int(failed.group(1)) if failed else 0,
    }


# ---------------------------------------------------------------------------- the bridge


@contextlib.contextmanager
def _network(server: PostgresServer, bridges: int) -> Iterator[Network]:
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as directory:
        network = prepare_network(
            Path(directory),
            replica_check="none",
            bridge_store=server.create_database(),
            bridges=bridges,
        )
        with network:
            fund_banks(network.config)
            yield network


def _interleaved(
    network: Network, server: PostgresServer, bin_dir: Path, settings: PostgresBenchSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bridge's PvPs in two halves with pgbench between them (bridge, pgbench, bridge), so
    a machine that gets busier or quieter during the run weighs on both sides alike. pgbench's
    entries are the size of those the first half wrote."""
    run_id = new_run_id()
    by_node = presign(network.directory, run_id, settings.pvps, settings.signers)
    first = {node: items[: len(items) // 2] for node, items in by_node.items()}
    second = {node: items[len(items) // 2 :] for node, items in by_node.items()}
    tally, seconds = asyncio.run(stream_pvps(first, settings.window, settings.batch))
    _, entry_bytes = _settled_in_database(network.config.bridge_store, run_id)
    pgbench = run_pgbench(
        server,
        bin_dir,
        clients=len(by_node),  # as many as the bridge's streams
        seconds=settings.pgbench_seconds,
        entry_bytes=entry_bytes or ENTRY_BYTES,
    )
    rest, more_seconds = asyncio.run(stream_pvps(second, settings.window, settings.batch))
    settled = tally.settled + rest.settled
    seconds += more_seconds
    stored, _ = _settled_in_database(network.config.bridge_store, run_id)
    rate = settled / seconds if seconds > 0 else 0.0
    failed = tally.failed + rest.failed
    bridge = {
        "bridge_pvp_per_s": round(rate, 1),
        "pvps_settled": settled,
        "settled_in_database": stored,
        "entry_bytes": entry_bytes,
        "refused": tally.refused + rest.refused,
        "failed": failed,
        "seconds": round(seconds, 2),
        "streams": len(by_node),
        "log": "not verified yet",
        "ok": stored == settled and failed == 0,
    }
    return bridge, pgbench


def _settled_in_database(url: str, run_id: str) -> tuple[int, int]:
    """The run's settled entries in the database, and their average size in bytes."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(ROUND(AVG(octet_length(data))), 0) FROM entries"
            " WHERE outcome = 'SETTLED' AND instruction_id LIKE %s",
            (f"{run_id}.%",),
        ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _verify(network: Network) -> tuple[bool, str]:
    from bridge.log.source import open_source
    from bridge.log.verify import verify_log

    config = network.config
    with open_source(config.bridge_store) as source:
        report = verify_log(source, trusted_genesis=config.genesis())
    if report.ok:
        return True, f"verified {report.blocks} blocks, {report.entries} entries"
    return False, f"FAILED: {report.failure}"


# ---------------------------------------------------------------------------- failover


def _leader_pid(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM leader").fetchone()
    assert row is not None
    return int(str(row[0]).rsplit("/", 1)[1])


def _bridge_processes(network: Network) -> list[NodeProcess]:
    return [network.bridge, *network.standby_bridges]


def _failover_once(network: Network) -> float:
    """Kill the leading bridge process; seconds until a payment settles again."""
    config = network.config
    leader_pid = _leader_pid(config.bridge_store)
    node = next(n for n in _bridge_processes(network) if n.process and n.process.pid == leader_pid)
    cb = config.central_banks[0]
    payer, payee = cb.banks[0].id, cb.banks[1].id
    key = config.load_key(payer)
    with grpc.insecure_channel(cb.address) as channel:
        stub = cb_grpc.CentralBankStub(channel)
        _pay(stub, payer, payee, cb.currency, key, deadline=time.monotonic() + 30)  # warm
        node.kill()
        killed = time.monotonic()
        _pay(stub, payer, payee, cb.currency, key, deadline=killed + 60)
        seconds = time.monotonic() - killed
    node.start({**os.environ, "PYTHONUNBUFFERED": "1"})
    node.wait_listening(time.monotonic() + 60)
    return seconds


def _pay(
    stub: cb_grpc.CentralBankStub,
    payer: str,
    payee: str,
    currency: str,
    key: PrivateKey,
    deadline: float,
) -> None:
    """One payment, resubmitted under the same id while it is not decided."""
    now = time.time_ns() // 1_000_000
    body = Pay(f"failover-{now}", payer, now + 120_000, payee, currency, 1, "", signed_at=now)
    message = wire.envelope_to_proto(sign_as_party(Envelope.of(body), payer, key))
    while True:
        try:
            stub.Pay(message, timeout=10)
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def describe(figures: dict[str, Any]) -> str:
    goals = figures["goals_met"]
    return "\n".join(
        [
            f"pgbench (PvP-shaped SQL, {figures['settings']['clients']} clients): "
            f"{figures['pgbench_tps']:,.0f} tps",
            f"bridge on PostgreSQL ({figures['settings']['bridges']} processes): "
            f"{figures['bridge_pvp_per_s']:,.0f} PvP/s",
            f"ratio: {figures['ratio']:.3f} "
            f"(goal >= 0.5: {'met' if goals['ratio_ge_0_5'] else 'not met'})",
            f"failover after SIGKILL of the leader: p50 {figures['failover_s_p50']} s, "
            f"max {figures['failover_s_max']} s "
            f"(goal <= 5 s: {'met' if goals['failover_max_le_5_s'] else 'not met'})",
            f"log: {figures['bridge']['log']}",
        ]
    )
