"""A central bank node restarted over a log resumes from its replica checkpoint.

PBOC's node is stopped after a few hundred entries (it writes its checkpoint on the way out)
and started again: it restores the checkpoint, replays only the blocks sealed since, attests
new blocks and answers its banks' history completely, across the checkpoint and what it
replayed after it. Given a checkpoint of another chain on the same genesis (a block 1 the
bridge never sealed), or a file that is no database, the node discards it, says so once in its
log, and replays the bridge's log from height 1.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge.core.ledger import Ledger, SignatureCheck
from bridge.domain import SetPolicy
from bridge.log.blocks import seal
from bridge.signing import signed
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.replica import Replica
from participants.launcher import NodeProcess
from participants.network_config import NetworkConfig
from tests.conftest import RPC_TIMEOUT, VALID_FOR_MS, new_id, now_ms, wait_for

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

PAYMENTS = 200
MORE = 20  # payments made after the restart


def history(live: LiveNetwork) -> list[tuple[int, bytes]]:
    """ICBC's whole history from its node PBOC, as (seq, canonical bytes), in one page."""
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=1, limit=500), "ICBC")
    page = live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)
    assert page.next_seq == 0, "the page was meant to hold the whole answer"
    return [(e.entry.seq, bytes(e.entry.canonical)) for e in page.entries]


def history_holding(live: LiveNetwork, seqs: list[int]) -> list[tuple[int, bytes]]:
    """ICBC's history once it holds every seq in `seqs` (retrying while PBOC catches up)."""

    def complete() -> list[tuple[int, bytes]]:
        try:
            page = history(live)
        except grpc.RpcError:  # CATCHING_UP or not yet listening: ask again
            return []
        return page if set(seqs) <= {seq for seq, _ in page} else []

    return wait_for(complete, timeout=60, what="PBOC's history to hold every payment")


def events(node: NodeProcess, offset: int, end: int | None = None) -> list[dict[str, Any]]:
    """The JSON log lines the node wrote between bytes `offset` and `end` of its log."""
    out = []
    for line in node.log_path.read_bytes()[offset:end].splitlines():
        if line.startswith(b"{"):
            out.append(json.loads(line))
    return out


def only(found: list[dict[str, Any]], msg: str) -> dict[str, Any]:
    (event,) = [e for e in found if e["msg"] == msg]
    return event


def pboc_attests_sealed_height(live: LiveNetwork) -> int:
    """Wait until PBOC attested the bridge's sealed height (or later); return that height."""
    sealed = live.finality().sealed_height

    def attested() -> bool:
        reply = live.finality(sealed)
        return any(a.central_bank == "PBOC" for a in reply.attestations)

    wait_for(attested, timeout=60, what=f"PBOC to attest height {sealed}")
    return int(sealed)


def restart(live: LiveNetwork) -> tuple[NodeProcess, int]:
    """Stop PBOC's node (its stop line is returned), start it again; the log offset between."""
    node = live.network.central_banks["PBOC"]
    node.stop()
    offset = node.log_path.stat().st_size
    live.network.restart_central_bank("PBOC")
    live.reset_channels()
    return node, offset


def stop_line(live: LiveNetwork, offset: int) -> dict[str, Any]:
    """Stop PBOC's node, start it again, and return the stop line of the run after `offset`."""
    node = live.network.central_banks["PBOC"]
    node.stop()
    line = only(events(node, offset), "central bank node stopped")
    live.network.restart_central_bank("PBOC")
    live.reset_channels()
    return line


async def write_fork(config: NetworkConfig, path: Path) -> None:
    """PBOC's checkpoint of a chain the bridge never sealed: one block of one SetPolicy."""
    genesis = config.genesis()
    key = config.load_key("PBOC")
    ledger = Ledger(genesis, check=SignatureCheck.NONE)
    body = SetPolicy(
        new_id("policy"), "PBOC", now_ms() + VALID_FOR_MS, 0, 0, (), signed_at=now_ms()
    )
    ledger.apply(signed(body, key), now_ms())
    block = seal(1, genesis.hash(), ledger.take_batch().entries, now_ms())
    checkpoint = ReplicaCheckpoint(path)
    checkpoint.discard()
    replica = Replica(
        genesis,
        central_bank="PBOC",
        signer=key,
        verifier=None,
        check=SignatureCheck.NONE,
        checkpoint=checkpoint,
    )
    replica.apply_block(block.header, list(block.entry_bytes))
    await replica.save_checkpoint()
    checkpoint.close()


def test_restarted_node_replays_only_the_tail_after_its_checkpoint(live: LiveNetwork) -> None:
    """Restarted, PBOC restores its checkpoint, replays only newer blocks, attests new
    blocks and answers ICBC's history completely."""
    live.issue("ICBC", 1_000_000)
    seqs = [live.pay("ICBC", "BOCQ", 1 + i).receipt.seq for i in range(PAYMENTS)]
    before = history_holding(live, seqs)
    pboc_attests_sealed_height(live)

    node, offset = restart(live)
    stopped = only(events(node, 0, offset), "central bank node stopped")
    assert live.config.replica_checkpoint_path("PBOC").exists()
    restored = only(events(node, offset), "replica restored from its checkpoint")
    assert restored["height"] == stopped["height"] > 0

    more = [live.pay("ICBC", "BOCQ", 1 + i).receipt.seq for i in range(MORE)]
    sealed = pboc_attests_sealed_height(live)
    after = history_holding(live, more)
    assert after[: len(before)] == before
    assert [seq for seq, _ in after[len(before) :]] == more

    line = stop_line(live, offset)
    assert line["height"] >= sealed
    assert line["replayed"] == line["height"] - restored["height"]
    assert line["replayed"] < line["height"]


def test_checkpoint_of_another_chain_is_discarded_and_the_log_replayed(
    live: LiveNetwork,
) -> None:
    """Given a checkpoint whose block 1 is not the bridge's, PBOC discards it, replays the
    bridge's log from height 1 and answers history as before."""
    issued = live.issue("ICBC", 1_000).receipt.seq
    before = history_holding(live, [issued])
    node = live.network.central_banks["PBOC"]
    node.stop()
    asyncio.run(write_fork(live.config, live.config.replica_checkpoint_path("PBOC")))
    offset = node.log_path.stat().st_size
    live.network.restart_central_bank("PBOC")
    live.reset_channels()

    seq = live.pay("ICBC", "BOCQ", 1).receipt.seq
    after = history_holding(live, [seq])
    sealed = pboc_attests_sealed_height(live)
    found = events(node, offset)
    assert "replica restored from its checkpoint" in [e["msg"] for e in found]
    discarded = only(found, "replica checkpoint discarded")
    assert discarded["why"] == "the bridge's block at height 1 has another hash"
    assert after[: len(before)] == before
    assert [s for s, _ in after[len(before) :]] == [seq]

    line = stop_line(live, offset)
    assert line["height"] >= sealed
    assert line["replayed"] == line["height"], "the whole log was replayed"


def test_unreadable_checkpoint_is_discarded_and_the_log_replayed(live: LiveNetwork) -> None:
    """Given a checkpoint file that is no database, PBOC says so once and replays from 1."""
    node = live.network.central_banks["PBOC"]
    node.stop()
    path = live.config.replica_checkpoint_path("PBOC")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 64)
    offset = node.log_path.stat().st_size
    live.network.restart_central_bank("PBOC")
    live.reset_channels()

    seq = live.pay("ICBC", "BOCQ", 1).receipt.seq
    history_holding(live, [seq])
    sealed = pboc_attests_sealed_height(live)
    discarded = only(events(node, offset), "replica checkpoint discarded")
    assert discarded["why"].startswith("unusable:")
    line = stop_line(live, offset)
    assert line["height"] >= sealed
    assert line["replayed"] == line["height"]
