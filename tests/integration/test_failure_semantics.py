"""Refused versus not decided, through a live network: status details, SDK, CLI exit codes.

One network (bridge and four central bank nodes) runs for the module, once with the bridge on a
SQLite file and once on PostgreSQL. The status of every failed
call says which of the two kinds it is in its `google.rpc.ErrorInfo` metadata (`retryable`,
`outcome`); the SDK raises `Refusal` or `NotDecided`; the CLI exits 1 or 3. The last tests stall
a peer central bank node and stop the bridge, then restore them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp, Outcome, Pay
from bridge.errors import Reason
from participants.central_bank.channels import bridge_channel
from participants.launcher import free_ports
from participants.sdk import BankClient, NotDecided, Refusal, RetryPolicy
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    cross_border_dual_pvp,
    network_on_each_store,
    new_id,
    now_ms,
    refusal_of,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from participants.launcher import Network
    from tests.conftest import LiveNetwork

CLI = Path(sys.executable).parent / "cbdc-bridge"
FUNDS = 10_000_000
COMMIT_WAIT = 60.0  # the bridge gives up on a locked file after 10 s (busy_timeout)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network with its one bridge process on each store."""
    yield from network_on_each_store(request, tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    live.issue("ICBC", FUNDS)
    live.issue("HSBCHK", FUNDS)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test if there is none)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in {error.code().name}: {error.details()}")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cbdc-bridge ...` as a separate process started in `cwd`."""
    return subprocess.run(
        [str(CLI), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"},
    )


def settles_through_pboc(live: LiveNetwork) -> bool:
    """Whether a payment through PBOC's node settles now (False while it is not decided)."""
    try:
        live.pay("ICBC", "BOCQ", 1)
    except grpc.RpcError as error:
        if Reason(error_info(error).reason).retryable:
            return False
        raise
    return True


def dual(amount_cny: int = 20_000, amount_hkd: int = 21_700) -> DualPvp:
    return cross_border_dual_pvp(amount_cny, amount_hkd, "dual-signed, counterparty node stalled")


def test_a_refusal_says_retryable_false_in_its_error_info(live: LiveNetwork) -> None:
    """INSUFFICIENT_FUNDS: FAILED_PRECONDITION, ErrorInfo retryable=false, outcome=refused."""
    error = live.assert_refused_unchanged(
        lambda: live.pay("BOCQ", "ICBC", 10**15),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.INSUFFICIENT_FUNDS,
    )
    info = error_info(error)
    assert info.reason == "INSUFFICIENT_FUNDS"
    assert dict(info.metadata) == {"retryable": "false", "outcome": "refused"}


def test_sdk_repeat_after_an_id_conflict_returns_the_original_receipt(live: LiveNetwork) -> None:
    """pay(100, id X) settles; pay(999, id X) is ID_CONFLICT; pay(100, id X) is the original
    receipt again (duplicate, same seq), and only one entry is logged."""
    instruction_id = new_id("repeat")
    with BankClient.from_network(live.directory, "ICBC") as icbc:
        first = icbc.pay("BOCQ", "CNY", 100, instruction_id=instruction_id)
        assert first.outcome is Outcome.SETTLED
        assert not first.duplicate
        with pytest.raises(Refusal) as info:
            icbc.pay("BOCQ", "CNY", 999, instruction_id=instruction_id)
        assert info.value.reason is Reason.ID_CONFLICT
        again = icbc.pay("BOCQ", "CNY", 100, instruction_id=instruction_id)
    assert again.duplicate
    assert again.seq == first.seq
    assert again.outcome is Outcome.SETTLED
    assert live.entries_of_instruction("ICBC", instruction_id) == 1


def test_cli_refusal_exits_1_and_says_it_is_final(live: LiveNetwork, tmp_path: Path) -> None:
    """`cbdc-bridge bank pay` refused for funds: exit 1, reason printed, marked final, and the
    amounts in the bridge's message in major units of CNY, never bare minor units."""
    network = str(live.directory)
    result = run_cli(
        tmp_path, "bank", "pay", "ICBC", "99999999", "CNY", "--network", network, "--bank", "BOCQ"
    )
    assert result.returncode == 1, result.stderr
    assert "INSUFFICIENT_FUNDS" in result.stderr
    assert "refused (final, nothing changed)" in result.stderr
    assert "needs 99,999,999.00 CNY" in result.stderr
    assert not re.search(r"(?<![\d.,])\d{4,} CNY", result.stderr), result.stderr


def test_cli_resubmit_command_repeats_the_same_instruction(
    live: LiveNetwork, tmp_path: Path
) -> None:
    """`pvp propose` to an unreachable node exits 3 and prints a command naming the id, validity,
    signing time and settlement deadline; running that command prints the very same command
    again."""
    copy = tmp_path / "network"
    shutil.copytree(live.directory / "keys", copy / "keys")
    data = json.loads((live.directory / "network.json").read_text())
    for cb in data["central_banks"]:
        cb["port"] = free_ports(1)[0]
    (copy / "network.json").write_text(json.dumps(data))
    args = ["bank", "pvp", "propose", "HSBCHK", "--pay", "1,000 CNY", "--receive", "1085.20 HKD"]
    args += ["--network", str(copy), "--bank", "ICBC", "--timeout", "1"]
    first = run_cli(tmp_path, *args)
    assert first.returncode == 3, first.stdout + first.stderr
    (command,) = [line for line in first.stdout.splitlines() if line.startswith("cbdc-bridge ")]
    words = shlex.split(command)
    for option in ("--id", "--valid-until", "--signed-at", "--settle-by"):
        assert option in words, command
    assert words[words.index("--pay") + 1] == "1,000 CNY"
    again = run_cli(tmp_path, *words[1:])
    assert again.returncode == 3, again.stdout + again.stderr
    assert command in again.stdout.splitlines()


def submit_batch(
    live: LiveNetwork, instructions: list[types.SignedInstruction]
) -> dict[int, bridge_pb.SubmitResponse]:
    """One BridgeLedger.Submit message carrying `instructions` as a batch, sent as PBOC's node
    (raw bytes); each instruction's answer by its place in the batch."""
    message = bridge_pb.SubmitRequest(
        batch=[
            bridge_pb.SubmitRequest(correlation_id=index, instruction=instruction)
            for index, instruction in enumerate(instructions)
        ]
    )
    with bridge_channel(live.config, "PBOC") as channel:
        stream = channel.stream_stream(
            "/bridge.v1.BridgeLedger/Submit", request_serializer=None, response_deserializer=None
        )
        answers: dict[int, bridge_pb.SubmitResponse] = {}
        for raw in stream(iter([message.SerializeToString()]), timeout=COMMIT_WAIT):
            reply = bridge_pb.SubmitResponse.FromString(raw)
            for answer in reply.batch or (reply,):
                answers[answer.correlation_id] = answer
    assert sorted(answers) == list(range(len(instructions)))
    return answers


def on_sqlite_only(live: LiveNetwork) -> None:
    """These tests make block commits fail by holding the SQLite file's write lock; the
    PostgreSQL store's failed commits are held to the same answers by the store conformance
    suite (tests/integration/test_store_conformance.py) and its fencing tests."""
    if live.config.bridge_store:
        pytest.skip("the failure is made by locking the bridge's SQLite file")


def test_a_batch_whose_commit_fails_answers_every_instruction_not_decided(
    live: LiveNetwork,
) -> None:
    """The bridge's block commit fails (its file's write lock held by another process): a
    payment, its copy in the same batch and a payment refused only for the funds the first
    moved are all OUTCOME_UNKNOWN, none SETTLED or refused, while the copy of a payment
    committed in an earlier block keeps its receipt; resubmitted, each is decided once."""
    on_sqlite_only(live)
    live.issue("BOCQ", 5_000)

    def payment(amount: int) -> types.SignedInstruction:
        body = Pay(
            new_id("lost"),
            "BOCQ",
            now_ms() + VALID_FOR_MS,
            "ICBC",
            "CNY",
            amount,
            "INV-LOST-BLOCK",
            signed_at=now_ms(),
        )
        return live.endorsed(body)

    earlier = payment(10)
    committed = submit_batch(live, [earlier])[0].receipt
    assert committed.outcome == types.OUTCOME_SETTLED
    available, _ = live.balance("BOCQ", "CNY")
    everything, more = payment(available), payment(1)
    batch = [everything, everything, more, earlier]
    before = live.snapshot()
    lock = sqlite3.connect(live.config.bridge_db, timeout=COMMIT_WAIT, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # every write of the bridge waits, then fails
        answers = submit_batch(live, batch)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for index in (0, 1, 2):
        answer = answers[index]
        assert answer.WhichOneof("result") == "refusal", (index, answer)
        assert answer.refusal.reason == Reason.OUTCOME_UNKNOWN.value, (index, answer)
        assert answer.refusal.code == "UNAVAILABLE"
    assert answers[3].receipt.duplicate, answers[3]
    assert answers[3].receipt.seq == committed.seq
    assert live.snapshot() == before

    again = submit_batch(live, batch)
    assert again[0].receipt.outcome == types.OUTCOME_SETTLED
    assert not again[0].receipt.duplicate
    assert again[1].receipt.duplicate
    assert again[1].receipt.seq == again[0].receipt.seq
    assert again[2].refusal.reason == Reason.INSUFFICIENT_FUNDS.value
    assert live.entries_of_instruction("BOCQ", everything.instruction.instruction_id) == 1
    assert live.balance("BOCQ", "CNY")[0] == 0


def logged_since(path: Path, offset: int) -> list[dict[str, object]]:
    """The JSON records a node logged past `offset` bytes of its log file."""
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_failing_block_commits_are_logged_once_with_their_cause(live: LiveNetwork) -> None:
    """Two batches whose block commits fail (the bridge's file locked by another process): the
    bridge logs one ERROR line naming the cause, without traceback, then one line on recovery;
    both batches were answered OUTCOME_UNKNOWN."""
    on_sqlite_only(live)
    log = live.directory / "logs" / "bridge.log"
    offset = log.stat().st_size

    def payment() -> types.SignedInstruction:
        body = Pay(
            new_id("logged"),
            "ICBC",
            now_ms() + VALID_FOR_MS,
            "BOCQ",
            "CNY",
            5,
            "",
            signed_at=now_ms(),
        )
        return live.endorsed(body)

    lock = sqlite3.connect(live.config.bridge_db, timeout=COMMIT_WAIT, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        for _ in range(2):
            (answer,) = submit_batch(live, [payment()]).values()
            assert answer.refusal.reason == Reason.OUTCOME_UNKNOWN.value, answer
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    (settled,) = submit_batch(live, [payment()]).values()
    assert settled.receipt.outcome == types.OUTCOME_SETTLED

    def episode() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        records = logged_since(log, offset)
        failing = [r for r in records if str(r["msg"]).startswith("ledger store writes failing")]
        recovered = [r for r in records if "ledger store writes recovered" in str(r["msg"])]
        return failing, recovered

    failing, recovered = wait_for(
        lambda: (found := episode())[1] and found, timeout=RPC_TIMEOUT, what="the recovery line"
    )
    assert len(failing) == 1, failing
    assert failing[0]["level"] == "error"
    assert "database is locked" in str(failing[0]["msg"])
    assert "exc" not in failing[0], "an expected store failure is logged without traceback"
    assert len(recovered) == 1, recovered
    with_traceback = [r for r in logged_since(log, offset) if "exc" in r]
    assert not with_traceback, with_traceback


def test_stalled_peer_node_reaches_the_bank_as_retryable_not_expired(live: LiveNetwork) -> None:
    """HKMA's node stalled: PBOC's endorsement request times out and ICBC hears a retryable
    UNAVAILABLE (not INSTRUCTION_EXPIRED); once HKMA is back the same instruction settles once."""
    body = dual()
    message = live.dual_signed(body)
    hkma = live.network.central_banks["HKMA"]
    before = live.snapshot()
    hkma.signal(signal.SIGSTOP)
    try:
        error = refusal_of(lambda: live.node("PBOC").SubmitDualPvp(message, timeout=RPC_TIMEOUT))
    finally:
        hkma.signal(signal.SIGCONT)
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
    info = error_info(error)
    assert info.reason == "UNAVAILABLE"
    assert dict(info.metadata) == {"retryable": "true", "outcome": "not_decided"}
    assert live.snapshot() == before
    status = live.node("PBOC").SubmitDualPvp(message, timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_SETTLED
    assert live.entries_of_instruction("ICBC", body.instruction_id) == 1


def test_bridge_down_is_not_decided_and_the_printed_command_resubmits(
    live: LiveNetwork, tmp_path: Path
) -> None:
    """Bridge stopped, PBOC's node up: a raw Pay says retryable=true; the CLI exits 3 and prints
    the command with the same id and validity; run after the bridge is back, it settles once."""
    network = str(live.directory)
    live.network.bridge.stop()
    try:
        error = refusal_of(lambda: live.pay("ICBC", "BOCQ", 50))
        assert error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
        info = error_info(error)
        assert Reason(info.reason).retryable
        assert dict(info.metadata) == {"retryable": "true", "outcome": "not_decided"}
        with (
            BankClient.from_network(
                live.directory, "ICBC", timeout=3, retry=RetryPolicy(max_attempts=2)
            ) as icbc,
            pytest.raises(NotDecided),
        ):
            icbc.pay("BOCQ", "CNY", 50)
        result = run_cli(
            tmp_path,
            "bank",
            "pay",
            "BOCQ",
            "12.34",
            "CNY",
            "--network",
            network,
            "--bank",
            "ICBC",
            "--timeout",
            "3",
        )
    finally:
        live.network.restart_bridge()
        live.reset_channels()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not decided" in result.stderr
    (command,) = [line for line in result.stdout.splitlines() if line.startswith("cbdc-bridge ")]
    words = shlex.split(command)
    instruction_id = words[words.index("--id") + 1]
    assert instruction_id in result.stderr
    assert "--valid-until" in words
    assert live.entries_of_instruction("ICBC", instruction_id) == 0

    wait_for(lambda: settles_through_pboc(live), timeout=60, what="PBOC to reach the bridge again")
    before = live.balance("BOCQ", "CNY")
    again = run_cli(tmp_path, *words[1:])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "SETTLED" in again.stdout
    assert live.balance("BOCQ", "CNY")[0] == before[0] + 1234
    once_more = run_cli(tmp_path, *words[1:])
    assert once_more.returncode == 0, once_more.stderr
    assert "already recorded" in once_more.stdout
    assert live.entries_of_instruction("ICBC", instruction_id) == 1
