"""`cbdc-bridge bench replay`: a central bank replica's CPU per replayed entry.

One process, one run. A log of `pvps` dual-signed PvPs is generated and sealed into real blocks
of `block` entries (after one block admitting and funding the banks), as the bridge seals them:
both banks sign each PvP, and each central bank endorses its banks' legs of a block in one
batch (one root signature, each leg with its Merkle path), as nodes forward legs in batches.
Then, in `rounds` rounds, each measurement is taken in turn (the order rotating each round, so
drift in CPU speed during the run weighs on all alike):

- `replay_us_per_entry[check]`: a fresh `Replica` (what a central bank node runs, at replica
  check `check`) replaying every block through `Replica.apply_block`: hash link, Merkle root,
  decoding each entry from its canonical bytes, the ledger core's replay, the index of
  parties; thread CPU time per entry of the PvP blocks. With `--checkpoint` the replica keeps
  a checkpoint file as a node does by default (its receipts and closed PvPs looked up there,
  the changes gathered for each write; the writes themselves run on a worker thread);
- with `known` (a share, 0 to 1), that share of the PvPs is decoded before its block as a
  node decodes them at its edge (the banks' signed instruction, from protobuf) and kept in the
  replica's known bodies, whose entries' replay takes the decoded body (in `bench stream`
  each PvP is decoded by 2 of the 4 nodes: 0.5); the edge's decoding is not timed;
- `baseline_us_per_entry`: `json.loads` and SHA-256 of the same entry bytes, the floor any
  replay of a JSON log pays.

Each figure is the median over the rounds (`_min` beside it: the least), and `ratio[check]` is
the median over the rounds of replay / baseline in the same round. CPU time is thread CPU
time: on a shared machine it is steadier than wall time. `--profile FILE` also writes a
cProfile of one more replay at the first check level.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import Any

from bridge import wire
from bridge._proto.bridge.v1.types_pb2 import SignedInstruction
from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    DualPvp,
    Entry,
    Envelope,
    Genesis,
    Outcome,
    ParticipantId,
    Signature,
)
from bridge.log.blocks import BlockHeader, seal
from bridge.signing import endorse_legs, sign_as_party
from loadtest.bench_core import (
    START,
    BenchNetwork,
    build_network,
    dual_pvp_bodies,
    setup_envelopes,
)
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.replica import Replica

DEFAULT_PVPS = 10_000
DEFAULT_BLOCK = 40
DEFAULT_ROUNDS = 5
CHECKS = ("none", "endorsements")
Block = tuple[BlockHeader, list[bytes]]


@dataclass(frozen=True, slots=True)
class ReplayLog:
    """A sealed log: its genesis and blocks (header, canonical entry bytes), the first block
    holding the setup (admissions, funding), every other block dual-signed PvPs only."""

    genesis: Genesis
    blocks: tuple[Block, ...]
    pvps: int


def _endorsed(network: BenchNetwork, bodies: Sequence[DualPvp]) -> list[Envelope]:
    """Both banks sign every body; each central bank endorses its banks' legs in one batch."""
    home = {bank.id: bank.central_bank for bank in network.banks}
    signed = []
    for body in bodies:
        envelope = Envelope.of(body)
        for party in body.parties():
            envelope = sign_as_party(envelope, party, network.keys[party])
        signed.append(envelope)
    legs: dict[ParticipantId, list[tuple[int, ParticipantId]]] = {}
    for number, envelope in enumerate(signed):
        for party in envelope.body.parties():
            legs.setdefault(home[party], []).append((number, party))
    endorsements: dict[tuple[int, ParticipantId], Signature] = {}
    for central_bank, batch in legs.items():
        done = endorse_legs(
            [(signed[n], party) for n, party in batch], central_bank, network.keys[central_bank]
        )
        endorsements.update(zip(batch, done, strict=True))
    return [
        Envelope(
            envelope.body,
            (*envelope.signatures, *(endorsements[n, p] for p in envelope.body.parties())),
            envelope.body_bytes,
        )
        for n, envelope in enumerate(signed)
    ]


def build_log(pvps: int = DEFAULT_PVPS, block: int = DEFAULT_BLOCK, seed: int = 7) -> ReplayLog:
    """Settle a setup block and `pvps` dual-signed PvPs in blocks of `block` on a ledger
    (signature checks off: the signatures are real, checking them is the replica's part)."""
    network = build_network()
    ledger = Ledger(network.genesis, verifier=None, check=SignatureCheck.NONE)
    bodies = dual_pvp_bodies(network, pvps, seed)
    batches: list[Sequence[Envelope]] = [setup_envelopes(network)]
    for start in range(0, pvps, block):
        batches.append(_endorsed(network, bodies[start : start + block]))
    blocks: list[Block] = []
    prev_hash = network.genesis.hash()
    for height, batch in enumerate(batches, start=1):
        now = START + height
        for envelope in batch:
            receipt = ledger.apply(envelope, now)
            if height > 1 and receipt.outcome is not Outcome.SETTLED:
                raise RuntimeError(f"a benchmark PvP did not settle: {receipt}")
        sealed = seal(height, prev_hash, ledger.take_batch().entries, now)
        blocks.append((sealed.header, list(sealed.entry_bytes)))
        prev_hash = sealed.header.hash()
    return ReplayLog(network.genesis, tuple(blocks), pvps)


# ---------------------------------------------------------------------------- measurements


def _replica(genesis: Genesis, check: SignatureCheck, checkpoint: Path | None) -> Replica:
    return Replica(
        genesis,
        central_bank=genesis.central_banks[0].id,
        signer=PrivateKey.generate(),
        verifier=None if check is SignatureCheck.NONE else FastVerifier(),
        check=check,
        checkpoint=None if checkpoint is None else ReplicaCheckpoint(checkpoint),
    )


def _edge_messages(log: ReplayLog, known: float) -> list[list[bytes]]:
    """Per PvP block, the serialized signed instructions (the banks' two signatures, as a
    node receives them) of the share `known` of its entries."""
    messages: list[list[bytes]] = []
    number = 0
    for _, entries in log.blocks[1:]:
        block: list[bytes] = []
        for data in entries:
            if int((number + 1) * known) > int(number * known):
                envelope = Entry.from_canonical_bytes(data).envelope
                parties = envelope.body.parties()
                signed = envelope.with_signatures(
                    tuple(s for s in envelope.signatures if not s.endorses and s.signer in parties)
                )
                block.append(wire.envelope_to_proto(signed).SerializeToString())
            number += 1
        messages.append(block)
    return messages


async def _replay(
    log: ReplayLog, check: SignatureCheck, checkpoint: Path | None, known: float = 0.0
) -> float:
    """Thread CPU seconds a fresh replica spends replaying the PvP blocks (the setup block
    is replayed first, untimed). With a checkpoint, it is written when a node would write
    it, on a worker thread as a node does (its CPU is not this thread's)."""
    replica = _replica(log.genesis, check, checkpoint)
    (setup_header, setup_entries), *rest = log.blocks
    replica.apply_block(setup_header, setup_entries)
    gc.collect()
    spent = 0.0
    edge = _edge_messages(log, known) if known else [[] for _ in rest]
    for (header, entries), messages in zip(rest, edge, strict=True):
        for message in messages:  # as the node's edge decodes them, before the block
            replica.known.remember(wire.envelope_from_proto(SignedInstruction.FromString(message)))
        started = time.thread_time()
        replica.apply_block(header, entries)
        spent += time.thread_time() - started
        if replica.checkpoint_due():
            await replica.save_checkpoint()
    await asyncio.sleep(0)  # let the replica's notifications run
    if replica.checkpoint is not None:
        await replica.save_checkpoint()
        replica.checkpoint.close()
    if replica.height != len(log.blocks) or replica.ledger.conservation_errors():
        raise RuntimeError("the replica does not end where the log does")
    return spent


def replay_seconds(
    log: ReplayLog, check: SignatureCheck, checkpoint: bool = False, known: float = 0.0
) -> float:
    if not checkpoint:
        return asyncio.run(_replay(log, check, None, known))
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as directory:
        return asyncio.run(_replay(log, check, Path(directory) / "replica.sqlite", known))


def baseline_seconds(log: ReplayLog) -> float:
    """Thread CPU seconds of `json.loads` and SHA-256 over the same PvP entry bytes."""
    loads = json.loads
    gc.collect()
    started = time.thread_time()
    for _, entries in log.blocks[1:]:
        for data in entries:
            loads(data)
            sha256(data).digest()
    return time.thread_time() - started


def run(
    pvps: int = DEFAULT_PVPS,
    block: int = DEFAULT_BLOCK,
    rounds: int = DEFAULT_ROUNDS,
    checks: Sequence[str] = CHECKS,
    profile: Path | None = None,
    checkpoint: bool = False,
    known: float = 0.0,
) -> dict[str, Any]:
    if pvps < 1 or block < 1 or rounds < 1 or not checks:
        raise ValueError("pvps, block and rounds must be positive, with a check level at least")
    if not 0.0 <= known <= 1.0:
        raise ValueError("known is a share of the PvPs, from 0 to 1")
    levels = [SignatureCheck(check) for check in checks]
    log = build_log(pvps, block)
    entries = sum(len(e) for _, e in log.blocks[1:])
    runs: list[tuple[str, Callable[[], float]]] = [("baseline", partial(baseline_seconds, log))]
    runs += [
        (level.value, partial(replay_seconds, log, level, checkpoint, known)) for level in levels
    ]
    spent: dict[str, list[float]] = {name: [] for name, _ in runs}
    for round_ in range(rounds):
        for turn in range(len(runs)):
            name, measure = runs[(round_ + turn) % len(runs)]
            spent[name].append(measure() / entries * 1e6)
    if profile is not None:
        profiler = cProfile.Profile()
        profiler.runcall(replay_seconds, log, levels[0], checkpoint, known)
        profiler.dump_stats(str(profile))
    baseline = statistics.median(spent["baseline"])
    replay = {level.value: statistics.median(spent[level.value]) for level in levels}
    return {
        "benchmark": "replay",
        "pvps": pvps,
        "entries": entries,
        "block_entries": block,
        "blocks": len(log.blocks) - 1,
        "rounds": rounds,
        "checkpoint": checkpoint,
        "known": known,
        "entry_bytes": sum(len(d) for _, e in log.blocks[1:] for d in e) // entries,
        "replay_us_per_entry": {name: round(us, 2) for name, us in replay.items()},
        "replay_us_per_entry_min": {
            level.value: round(min(spent[level.value]), 2) for level in levels
        },
        "baseline_us_per_entry": round(baseline, 2),
        "baseline_us_per_entry_min": round(min(spent["baseline"]), 2),
        "ratio": {
            level.value: round(
                statistics.median(
                    r / b for r, b in zip(spent[level.value], spent["baseline"], strict=True)
                ),
                2,
            )
            for level in levels
        },
        "python": platform.python_version(),
    }


def describe(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['entries']:,} dual-signed PvP entries in {figures['blocks']:,} blocks of "
        f"{figures['block_entries']}, {figures['entry_bytes']} bytes each, "
        f"median of {figures['rounds']} rounds (thread CPU)",
        f"  baseline (json.loads + SHA-256)  {figures['baseline_us_per_entry']:>8.2f} us/entry",
    ]
    for check, us in figures["replay_us_per_entry"].items():
        lines.append(
            f"  replay, replica check {check:<12}{us:>7.2f} us/entry  "
            f"(x{figures['ratio'][check]} the baseline)"
        )
    return "\n".join(lines)


__all__ = ["DEFAULT_BLOCK", "DEFAULT_PVPS", "build_log", "describe", "run"]


if __name__ == "__main__":  # python -m loadtest.bench_replay: the defaults, as JSON
    print(json.dumps(run()))
