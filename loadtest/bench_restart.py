"""`cbdc-bridge bench restart`: restart cost and memory of the nodes, as the log grows.

On the cached sample log of `bench verify` (real P-256 signatures, blocks of 500 entries), each
measurement in a process of its own (so its resident memory is its own), blocks read one at a
time from the log's SQLite file (no gRPC):

- replica: a central bank replica replays all but the last `tail` entries, writing its
  checkpoint when a node would (`Replica.checkpoint_due`); its resident set size (RSS) is read
  right after a checkpoint write once past 10,000 entries, and after the last one;
- checkpoint restart: a new replica loads that checkpoint, replays the tail and signs its head:
  what a node does before it can attest again (process start and gRPC stream excluded);
- bridge: a settlement engine over a new SQLite store settles the log's instructions, one block
  per log block (signature checks off: they cost time, not memory); RSS after 10,000 entries
  and after the last, then the time to reopen the store and settle a retry of its first
  instruction (a duplicate found in the store);
- full replay (optional, `--full`): a replica without checkpoint replays every block.

Wall and CPU seconds are printed: on a shared machine the CPU figure is the steadier.
"""

from __future__ import annotations

import asyncio
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import Entry, ExpirePvp, Genesis, Receipt
from bridge.log.blocks import BlockHeader
from bridge.settlement import SettlementEngine
from bridge.store.receipts import StoredReceipts
from bridge.store.sqlite import SqliteStore
from loadtest.bench_verify import cache_dir, ensure_log
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.replica import Replica

Block = tuple[BlockHeader, list[bytes]]
EARLY_ENTRIES = 10_000  # memory is compared against the figure after this many entries
HEADERS_PER_READ = 200


def rss_mib() -> float:
    """This process's resident set size, after a full garbage collection (Linux)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS in /proc/self/status")


def log_shape(path: Path) -> tuple[Genesis, int, int]:
    """The log's genesis, head height and entry count."""
    store = SqliteStore(path)
    try:
        genesis, head = store.genesis(), store.head()
        if genesis is None or head is None:
            raise RuntimeError(f"{path} holds no log")
        return genesis, head.height, head.first_seq + head.entry_count - 1
    finally:
        store.close()


def blocks(path: Path, first: int, last: int) -> Iterator[Block]:
    """Blocks `first`..`last` of the log, read a few at a time (never all in memory)."""
    store = SqliteStore(path)
    try:
        for start in range(first, last + 1, HEADERS_PER_READ):
            headers = list(store.headers(start, min(last, start + HEADERS_PER_READ - 1)))
            for header in headers:
                yield header, store.block_entry_bytes(header.height)
    finally:
        store.close()


def cut_height(path: Path, tail: int) -> int:
    """The last block before the tail: the checkpoint holds blocks up to it."""
    _, height, total = log_shape(path)
    store = SqliteStore(path)
    try:
        for header in reversed(list(store.headers(1, height))):
            if total - (header.first_seq + header.entry_count - 1) >= tail:
                return header.height
    finally:
        store.close()
    return 0


def new_replica(genesis: Genesis, checkpoint: Path | None) -> Replica:
    return Replica(
        genesis,
        central_bank=genesis.central_banks[0].id,
        signer=PrivateKey.generate(),
        verifier=FastVerifier(),
        check=SignatureCheck.ENDORSEMENTS,
        checkpoint=None if checkpoint is None else ReplicaCheckpoint(checkpoint),
    )


# ---------------------------------------------------------------------- the measurements


async def replica_pass(log: Path, directory: Path, cut: int) -> dict[str, Any]:
    """Replay blocks 1..cut with a checkpoint, as a node would; RSS early and at the end."""
    genesis, _, _ = log_shape(log)
    replica = new_replica(genesis, directory / "replica.sqlite")
    rss_start = rss_mib()
    rss_early = None
    started, cpu = time.perf_counter(), time.process_time()
    for header, entries in blocks(log, 1, cut):
        replica.apply_block(header, entries)
        if replica.checkpoint_due():
            await replica.save_checkpoint()
        if rss_early is None and replica.last_seq >= EARLY_ENTRIES:
            await replica.save_checkpoint()  # both figures are taken right after a write
            rss_early = (replica.last_seq, rss_mib())
    await replica.save_checkpoint()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    receipts = replica.ledger.receipts
    held = receipts.held() if isinstance(receipts, StoredReceipts) else None
    early_entries, early_rss = rss_early or (replica.last_seq, rss_mib())
    return {
        "replica_entries": replica.last_seq,
        "replica_replay_seconds": round(seconds, 2),
        "replica_replay_cpu_seconds": round(cpu_seconds, 2),
        "replica_rss_start_mib": rss_start,
        "replica_rss_early_entries": early_entries,
        "replica_rss_early_mib": early_rss,
        "replica_rss_end_mib": rss_mib(),
        "replica_receipts_in_memory": held,
        "replica_closed_pvps_in_memory": sum(
            1 for s in replica.ledger.pvps.values() if s.closed_seq
        ),
        "checkpoint_mib": round((directory / "replica.sqlite").stat().st_size / 2**20, 1),
    }


async def restart_pass(log: Path, directory: Path, cut: int, last: int) -> dict[str, Any]:
    """A new replica loads the checkpoint, replays the tail and attests."""
    genesis, _, _ = log_shape(log)
    tail = list(blocks(log, cut + 1, last))  # read before the clock starts
    started, cpu = time.perf_counter(), time.process_time()
    replica = new_replica(genesis, directory / "replica.sqlite")
    if not replica.restore():
        raise RuntimeError("the checkpoint was not restored")
    load_seconds = time.perf_counter() - started
    for header, entries in tail:
        replica.apply_block(header, entries)
    if replica.attest_head() is None:
        raise RuntimeError("nothing to attest")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    if replica.height != last or replica.ledger.conservation_errors():
        raise RuntimeError("the restored replica does not end where the log does")
    return {
        "checkpoint_restart_seconds": round(seconds, 2),
        "checkpoint_restart_cpu_seconds": round(cpu_seconds, 2),
        "checkpoint_load_seconds": round(load_seconds, 2),
        "tail_entries": sum(h.entry_count for h, _ in tail),
        "tail_blocks": len(tail),
        "restart_rss_mib": rss_mib(),
    }


async def full_pass(log: Path, last: int) -> dict[str, Any]:
    """A replica without checkpoint replays every block, then attests."""
    genesis, _, _ = log_shape(log)
    started, cpu = time.perf_counter(), time.process_time()
    replica = new_replica(genesis, None)
    for header, entries in blocks(log, 1, last):
        replica.apply_block(header, entries)
    if replica.attest_head() is None:
        raise RuntimeError("nothing to attest")
    return {
        "full_replay_seconds": round(time.perf_counter() - started, 2),
        "full_replay_cpu_seconds": round(time.process_time() - cpu, 2),
        "full_replay_rss_mib": rss_mib(),
    }


def bridge_pass(log: Path, directory: Path, last: int) -> dict[str, Any]:
    """Settle the log's instructions on a new bridge store; RSS early and at the end; then
    reopen the store and retry its first settled instruction."""
    genesis, _, _ = log_shape(log)
    path = directory / "bridge.sqlite"
    store = SqliteStore(path, synchronous="NORMAL")
    engine = SettlementEngine.open(store, genesis, verifier=None, check=SignatureCheck.NONE)
    rss_start = rss_mib()
    rss_early = None
    first = None
    started, cpu = time.perf_counter(), time.process_time()
    for header, entries in blocks(log, 1, last):
        envelopes = [
            e.envelope
            for e in map(Entry.from_canonical_bytes, entries)
            if not isinstance(e.envelope.body, ExpirePvp)  # the engine expires on its own
        ]
        results = engine.settle(envelopes, header.time).results
        if first is None:
            first = next((e for e, r in zip(envelopes, results, strict=True) if _ok(r)), None)
        if rss_early is None and engine.ledger.next_seq > EARLY_ENTRIES:
            rss_early = (engine.ledger.next_seq - 1, rss_mib())
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    entries_settled = engine.ledger.next_seq - 1
    receipts = engine.ledger.receipts
    held = receipts.held() if isinstance(receipts, StoredReceipts) else None
    early_entries, early_rss = rss_early or (entries_settled, rss_mib())
    figures = {
        "bridge_entries": entries_settled,
        "bridge_settle_seconds": round(seconds, 2),
        "bridge_settle_cpu_seconds": round(cpu_seconds, 2),
        "bridge_rss_start_mib": rss_start,
        "bridge_rss_early_entries": early_entries,
        "bridge_rss_early_mib": early_rss,
        "bridge_rss_end_mib": rss_mib(),
        "bridge_receipts_in_memory": held,
        "bridge_closed_pvps_in_memory": sum(1 for s in engine.ledger.pvps.values() if s.closed_seq),
    }
    store.close()
    started = time.perf_counter()
    store = SqliteStore(path, synchronous="NORMAL")
    engine = SettlementEngine.open(store, genesis, verifier=None, check=SignatureCheck.NONE)
    figures["bridge_reopen_seconds"] = round(time.perf_counter() - started, 2)
    if first is not None:
        (retry,) = engine.settle([first], header.time).results
        if not (isinstance(retry, Receipt) and retry.duplicate):
            raise RuntimeError(f"a retry after reopening was not found: {retry}")
    figures["bridge_reopen_rss_mib"] = rss_mib()
    store.close()
    return figures


def _ok(result: object) -> bool:
    return isinstance(result, Receipt) and not result.duplicate


# ---------------------------------------------------------------------- driver


def child(role: str, log: Path, directory: Path, cut: int, last: int) -> dict[str, Any]:
    if role == "replica":
        return asyncio.run(replica_pass(log, directory, cut))
    if role == "restart":
        return asyncio.run(restart_pass(log, directory, cut, last))
    if role == "full":
        return asyncio.run(full_pass(log, last))
    if role == "bridge":
        return bridge_pass(log, directory, last)
    raise ValueError(f"unknown role {role}")


def in_child(role: str, log: Path, directory: Path, cut: int, last: int) -> dict[str, Any]:
    """Run one measurement in a new Python process (its memory is then its own)."""
    command = [
        sys.executable,
        "-m",
        "loadtest.bench_restart",
        role,
        str(log),
        str(directory),
        str(cut),
        str(last),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench restart {role} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(
    entries: int = 20_000,
    tail: int = 1_000,
    *,
    full: bool = True,
    bridge: bool = True,
    log: Path | None = None,
) -> dict[str, Any]:
    if log is None:
        log, _ = ensure_log(entries, cache_dir(), regenerate=False, status=lambda message: None)
    _, height, total = log_shape(log)
    cut = cut_height(log, tail)
    figures: dict[str, Any] = {"benchmark": "restart", "entries": total, "blocks": height}
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as name:
        directory = Path(name)
        if full:
            figures |= in_child("full", log, directory, cut, height)
        figures |= in_child("replica", log, directory, cut, height)
        figures |= in_child("restart", log, directory, cut, height)
        if bridge:
            figures |= in_child("bridge", log, directory, cut, height)
    for node in ("replica", "bridge"):
        early, end = figures.get(f"{node}_rss_early_mib"), figures.get(f"{node}_rss_end_mib")
        if early and end:
            figures[f"{node}_rss_ratio"] = round(end / early, 2)
    figures |= {"python": platform.python_version(), "machine": platform.machine()}
    return figures


def describe(figures: dict[str, Any]) -> str:
    lines = [f"log: {figures['entries']:,} entries in {figures['blocks']:,} blocks"]
    if "full_replay_seconds" in figures:
        lines.append(
            f"restart to attesting without checkpoint: {figures['full_replay_seconds']} s "
            f"({figures['full_replay_cpu_seconds']} CPU s; replay of every block)"
        )
    lines += [
        f"restart to attesting with checkpoint:    {figures['checkpoint_restart_seconds']} s "
        f"({figures['checkpoint_restart_cpu_seconds']} CPU s; load "
        f"{figures['checkpoint_load_seconds']} s, then a tail of "
        f"{figures['tail_entries']:,} entries in {figures['tail_blocks']} blocks; "
        f"RSS then {figures['restart_rss_mib']} MiB)",
        f"checkpoint: {figures['checkpoint_mib']} MiB",
        f"replica RSS: {figures['replica_rss_early_mib']} MiB after "
        f"{figures['replica_rss_early_entries']:,} entries, {figures['replica_rss_end_mib']} MiB "
        f"after {figures['replica_entries']:,} (x{figures.get('replica_rss_ratio')}; receipts in "
        f"memory {figures['replica_receipts_in_memory']}, closed PvPs "
        f"{figures['replica_closed_pvps_in_memory']:,}; replay {figures['replica_replay_seconds']}"
        f" s, {figures['replica_replay_cpu_seconds']} CPU s)",
    ]
    if "bridge_entries" in figures:
        lines.append(
            f"bridge RSS:  {figures['bridge_rss_early_mib']} MiB after "
            f"{figures['bridge_rss_early_entries']:,} entries, {figures['bridge_rss_end_mib']} MiB "
            f"after {figures['bridge_entries']:,} (x{figures.get('bridge_rss_ratio')}; receipts in "
            f"memory {figures['bridge_receipts_in_memory']}, closed PvPs "
            f"{figures['bridge_closed_pvps_in_memory']:,}; settled in "
            f"{figures['bridge_settle_seconds']} s); reopened in "
            f"{figures['bridge_reopen_seconds']} s, RSS then {figures['bridge_reopen_rss_mib']} MiB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    role, log_path, work, cut_arg, last_arg = sys.argv[1:6]
    print(json.dumps(child(role, Path(log_path), Path(work), int(cut_arg), int(last_arg))))
