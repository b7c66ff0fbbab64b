"""A central bank node restarted over a long log says it is catching up; it never answers short.

PBOC's node is restarted after a few hundred blocks without its replica checkpoint (removed
while it is down, so nothing is restored); its replica replays them from height 1,
slowed down by a test hook (CBDC_BRIDGE_TEST_REPLAY_DELAY_MS) so the replay takes seconds on
any machine. Meanwhile ICBC asks for its history from a recent sequence number, over and over:
every answer is either the complete page (exactly what the node answered before the restart)
or UNAVAILABLE with reason CATCHING_UP (retryable) naming both heights; never an empty or
partial page with OK. BOCQ meanwhile asks for the status of one of ICBC's instructions it is no
party to, and of an id ICBC never used: the answers must not tell them apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge.errors import Reason
from participants.launcher import READY_TIMEOUT
from tests.conftest import (
    RPC_TIMEOUT,
    network_on_each_store,
    new_id,
    reason_of,
    refusal_of,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from participants.launcher import Network
    from tests.conftest import LiveNetwork


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network with its one bridge process on each store."""
    yield from network_on_each_store(request, tmp_path_factory)


PAYMENTS = 300
RECENT = 60  # the history asked for: ICBC's last RECENT payments
REPLAY_DELAY_MS = 20  # per block: 300 blocks take at least 6 s to replay


def history(live: LiveNetwork, from_seq: int) -> list[tuple[int, bytes]]:
    """ICBC's history page from `from_seq`, as (seq, canonical bytes); raises if refused."""
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=from_seq, limit=500), "ICBC")
    page = live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)
    assert page.next_seq == 0, "the page was meant to hold the whole answer"
    return [(e.entry.seq, bytes(e.entry.canonical)) for e in page.entries]


def status_answer(live: LiveNetwork, instruction_id: str) -> Reason:
    """The reason BOCQ's status query for ICBC's `instruction_id` is refused with."""
    query = live.query(
        "GetInstructionStatus",
        cb_pb.InstructionStatusQuery(sender="ICBC", instruction_id=instruction_id),
        "BOCQ",
    )
    return reason_of(
        refusal_of(lambda: live.node("PBOC").GetInstructionStatus(query, timeout=RPC_TIMEOUT))
    )


def history_or_refusal(live: LiveNetwork, from_seq: int) -> list[tuple[int, bytes]] | grpc.RpcError:
    try:
        return history(live, from_seq)
    except grpc.RpcError as error:
        return error


def test_restarted_node_answers_history_complete_or_catching_up_never_short(
    live: LiveNetwork,
) -> None:
    """While its replica replays the log, PBOC answers CATCHING_UP or the full page, and
    answers another bank's status query for an existing instruction as for a missing one."""
    live.issue("ICBC", 1_000_000)
    foreign = live.pay("ICBC", "HSBCHK", 7).receipt.instruction_id  # BOCQ is no party
    missing = new_id("never-used")
    seqs = [live.pay("ICBC", "BOCQ", 1 + i).receipt.seq for i in range(PAYMENTS)]
    from_seq = seqs[-RECENT]
    complete = wait_for(
        lambda: (page := history(live, from_seq)) and len(page) >= RECENT and page,
        timeout=RPC_TIMEOUT,
        what="PBOC's replica to hold every payment",
    )
    assert [seq for seq, _ in complete] == seqs[-RECENT:]
    sealed = live.finality().sealed_height

    node = live.network.central_banks["PBOC"]
    node.stop()
    checkpoint = live.config.replica_checkpoint_path("PBOC")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{checkpoint}{suffix}").unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CBDC_BRIDGE_TEST_REPLAY_DELAY_MS": str(REPLAY_DELAY_MS),
    }
    node.start(env)
    node.wait_listening(time.monotonic() + READY_TIMEOUT)
    live.reset_channels()

    catching_up = 0
    deadline = time.monotonic() + READY_TIMEOUT + PAYMENTS * REPLAY_DELAY_MS / 1000
    while True:
        assert time.monotonic() < deadline, "PBOC never caught up"
        # asked in this order, a missing id told NOT_A_PARTY and then an existing one told
        # CATCHING_UP would show which exists (a node never goes back to catching up)
        told = (status_answer(live, missing), status_answer(live, foreign))
        assert told != (Reason.NOT_A_PARTY, Reason.CATCHING_UP), "existence shown"
        answer = history_or_refusal(live, from_seq)
        if isinstance(answer, list):
            assert answer == complete, f"a short page while catching up: {len(answer)} of {RECENT}"
            break
        message = answer.details() or ""
        assert answer.code() is grpc.StatusCode.UNAVAILABLE, message
        assert reason_of(answer) is Reason.CATCHING_UP, message
        assert "replayed to height" in message
        assert f"sealed height is {sealed}" in message or "not yet known" in message
        catching_up += 1
        time.sleep(0.05)
    assert catching_up, "the replay window was never observed"
    assert status_answer(live, missing) is status_answer(live, foreign) is Reason.NOT_A_PARTY
