"""`cbdc-bridge bench restart`: a central bank replica's restart cost, with and without checkpoint.

On the cached sample log of `bench verify` (real P-256 signatures, blocks of 500 entries), in
one process, blocks read from the log's SQLite file (no gRPC):

- full: a new replica replays every block (every signature checked), then signs its head: what
  a node without checkpoint does before it can attest again;
- checkpoint: a replica that replayed all but the last `tail` entries writes its checkpoint;
  a new replica loads it, replays the tail and signs its head.

Both include the first attestation; neither includes starting the process or the gRPC stream.
Wall and CPU seconds are printed: on a shared machine the CPU figure is the steadier.
"""

from __future__ import annotations

import asyncio
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import Genesis
from bridge.log.blocks import BlockHeader
from bridge.store.sqlite import SqliteStore
from loadtest.bench_verify import cache_dir, ensure_log
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.replica import Replica

Block = tuple[BlockHeader, list[bytes]]


def read_blocks(path: Path) -> tuple[Genesis, list[Block]]:
    store = SqliteStore(path)
    try:
        genesis = store.genesis()
        head = store.head()
        if genesis is None or head is None:
            raise RuntimeError(f"{path} holds no log")
        blocks = [(h, store.block_entry_bytes(h.height)) for h in store.headers(1, head.height)]
    finally:
        store.close()
    return genesis, blocks


def new_replica(genesis: Genesis, checkpoint: Path | None) -> Replica:
    return Replica(
        genesis,
        central_bank=genesis.central_banks[0].id,
        signer=PrivateKey.generate(),
        verifier=FastVerifier(),
        check=SignatureCheck.ENDORSEMENTS,
        checkpoint=None if checkpoint is None else ReplicaCheckpoint(checkpoint),
    )


async def measure(
    genesis: Genesis, blocks: list[Block], tail: int, directory: Path
) -> dict[str, Any]:
    # without checkpoint: replay everything, attest
    started, cpu = time.perf_counter(), time.process_time()
    full = new_replica(genesis, None)
    for header, entries in blocks:
        full.apply_block(header, entries)
    assert full.attest_head() is not None
    full_seconds = time.perf_counter() - started
    full_cpu = time.process_time() - cpu

    # the checkpoint a node running until then would have written (all but the tail)
    path = directory / "replica.sqlite"
    total = sum(h.entry_count for h, _ in blocks)
    cut = len(blocks)
    while cut > 0 and total - sum(h.entry_count for h, _ in blocks[: cut - 1]) <= tail:
        cut -= 1
    writer = new_replica(genesis, path)
    for header, entries in blocks[:cut]:
        writer.apply_block(header, entries)
    started = time.perf_counter()
    await writer.save_checkpoint()
    write_seconds = time.perf_counter() - started
    assert writer.checkpoint is not None
    writer.checkpoint.close()

    started, cpu = time.perf_counter(), time.process_time()
    restored = new_replica(genesis, path)
    if not restored.restore():
        raise RuntimeError("the checkpoint was not restored")
    load_seconds = time.perf_counter() - started
    for header, entries in blocks[cut:]:
        restored.apply_block(header, entries)
    assert restored.attest_head() is not None
    restart_seconds = time.perf_counter() - started
    restart_cpu = time.process_time() - cpu
    if restored.ledger.tables() != full.ledger.tables() or restored.head != full.head:
        raise RuntimeError("the restored replica differs from the full replay")
    return {
        "benchmark": "restart",
        "entries": total,
        "blocks": len(blocks),
        "tail_entries": total - sum(h.entry_count for h, _ in blocks[:cut]),
        "tail_blocks": len(blocks) - cut,
        "full_replay_seconds": round(full_seconds, 2),
        "full_replay_cpu_seconds": round(full_cpu, 2),
        "checkpoint_restart_seconds": round(restart_seconds, 2),
        "checkpoint_restart_cpu_seconds": round(restart_cpu, 2),
        "checkpoint_load_seconds": round(load_seconds, 2),
        "checkpoint_write_all_seconds": round(write_seconds, 2),
        "checkpoint_mib": round(path.stat().st_size / 2**20, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def run(entries: int = 20_000, tail: int = 1_000) -> dict[str, Any]:
    path, _ = ensure_log(entries, cache_dir(), regenerate=False, status=lambda message: None)
    genesis, blocks = read_blocks(path)
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as directory:
        return asyncio.run(measure(genesis, blocks, tail, Path(directory)))


def describe(figures: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"log: {figures['entries']:,} entries in {figures['blocks']:,} blocks",
            f"restart to attesting without checkpoint: {figures['full_replay_seconds']} s "
            f"({figures['full_replay_cpu_seconds']} CPU s; replay of every block)",
            f"restart to attesting with checkpoint:    {figures['checkpoint_restart_seconds']} s "
            f"({figures['checkpoint_restart_cpu_seconds']} CPU s; load "
            f"{figures['checkpoint_load_seconds']} s, then a tail of "
            f"{figures['tail_entries']:,} entries in {figures['tail_blocks']} blocks)",
            f"checkpoint: {figures['checkpoint_mib']} MiB, written in one go in "
            f"{figures['checkpoint_write_all_seconds']} s",
        ]
    )
