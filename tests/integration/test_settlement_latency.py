"""Signing times end to end: banks sign `signed_at` into their instructions, the bridge settles
them over gRPC, and the exported log alone gives each settlement's latency.

One network (bridge, PBOC/CNY with ICBC and BOCQ, HKMA/HKD with HSBCHK and BOCHK) runs for the
module on free loopback ports and is always stopped. The CLI runs as a subprocess from a
temporary directory, the export is written by `cbdc-bridge log export`, and a request without
a signing time goes as raw protobuf bytes over a generic channel.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bridge import wire
from bridge.domain import CLOCK_SKEW_MS, Envelope, Outcome, Pay
from bridge.log.tables import iso_time
from bridge.signing import sign_as_party
from participants.launcher import Network, prepare_network
from participants.sdk import BankClient, CentralBankAdminClient

CLI = Path(sys.executable).with_name("cbdc-bridge")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A started two-jurisdiction network with ICBC and HSBCHK funded; always stopped."""
    directory = tmp_path_factory.mktemp("latency-network")
    network = prepare_network(directory, central_banks=2, banks_per_central_bank=2).start()
    try:
        for bank_id, cb_id, currency in (("ICBC", "PBOC", "CNY"), ("HSBCHK", "HKMA", "HKD")):
            with BankClient.from_network(directory, bank_id) as bank:
                bank.wait_ready(timeout=60)
            with CentralBankAdminClient.from_network(directory, cb_id) as admin:
                admin.issue(bank_id, currency, 100_000_000)
        yield network
    finally:
        network.stop()


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cbdc-bridge ...` as a separate process started in `cwd`."""
    return subprocess.run(
        [str(CLI), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"},
    )


def export(network: Network, cwd: Path) -> Path:
    """A fresh CSV export of the bridge's store, written by the CLI run from `cwd`."""
    source = str(network.config.bridge_db)
    result = run_cli(cwd, "log", "export", "--source", source, "--format", "csv", "--out", "export")
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "export"


def rows(export_dir: Path, table: str) -> list[dict[str, str]]:
    with (export_dir / f"{table}.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_exported_log_gives_each_settlements_latency_from_its_signature(
    network: Network, tmp_path: Path
) -> None:
    """A payment, a dual-signed PvP and a propose/accept PvP signed through the SDK settle over
    gRPC; in the exported legs each carries the signing time its bank put in the body (between
    the test's clock readings around the calls), and latency_ms = time_ms - signed_at_ms >= 0;
    the accepted PvP counts from the acceptance, its wait for acceptance stands apart."""
    directory = network.directory
    with (
        BankClient.from_network(directory, "ICBC") as icbc,
        BankClient.from_network(directory, "HSBCHK") as hsbchk,
    ):
        before = wall_ms()
        paid = icbc.pay("HSBCHK", "CNY", 12_345, "INV-CQ-0117")
        offer = hsbchk.sign_dual_pvp(
            "ICBC", pay=("HKD", 108_000), receive=("CNY", 100_000), rate="0.925926"
        )
        dual = icbc.submit_dual_pvp(offer)
        proposed = icbc.propose_pvp(
            "HSBCHK", pay=("CNY", 70_000), receive=("HKD", 75_600), rate="1.08"
        )
        accept_signed_from = wall_ms()
        accepted = hsbchk.accept_pvp("ICBC", proposed.instruction_id)
        after = wall_ms()
        for result, client in ((paid, icbc), (dual, icbc), (accepted, hsbchk)):
            assert result.outcome is Outcome.SETTLED
            client.wait_final(result.instruction_id, timeout=60)
    exported = export(network, tmp_path)
    legs = {int(row["seq"]): row for row in rows(exported, "legs") if row["leg"] == "1"}
    signed_from: dict[int, int] = {paid.seq: before, dual.seq: before}
    signed_from[accepted.seq] = accept_signed_from
    for result in (paid, dual, accepted):
        row = legs[result.seq]
        signed_at, time_ms = int(row["signed_at_ms"]), int(row["time_ms"])
        assert signed_from[result.seq] <= signed_at <= after, row
        assert int(row["latency_ms"]) == time_ms - signed_at >= 0, row
        assert time_ms <= wall_ms()
        assert row["signed_at"] == iso_time(signed_at)
    waited = legs[accepted.seq]
    (proposal,) = [r for r in rows(exported, "entries") if r["seq"] == str(proposed.seq)]
    assert proposal["kind"] == "pvp_propose"
    assert int(proposal["latency_ms"]) == int(proposal["time_ms"]) - int(proposal["signed_at_ms"])
    proposal_time = int(proposal["time_ms"])
    assert int(waited["initiated_ms"]) == proposal_time
    assert int(waited["propose_to_accept_ms"]) == int(waited["time_ms"]) - proposal_time
    assert int(waited["signed_at_ms"]) >= proposal_time  # the acceptance's, not the proposal's


def test_cli_resubmission_repeats_the_signing_time_and_a_clock_ahead_is_refused(
    network: Network, tmp_path: Path
) -> None:
    """`bank pay` with the same --id, --valid-until and --signed-at is a duplicate of the
    recorded payment; another --signed-at is another body (ID_CONFLICT); a signing time beyond
    the clock skew ahead of the bridge is refused INVALID_TIME, with exit 1 and nothing paid."""
    now = wall_ms()
    base = ["bank", "pay", "BOCQ", "1.00", "CNY", "--network", str(network.directory)]
    base += ["--bank", "ICBC", "--id", f"lat-{now}", "--valid-until", str(now + 120_000)]
    first = run_cli(tmp_path, *base, "--signed-at", str(now))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "SETTLED" in first.stdout
    again = run_cli(tmp_path, *base, "--signed-at", str(now))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already recorded" in again.stdout
    other = run_cli(tmp_path, *base, "--signed-at", str(now + 1))
    assert other.returncode == 1, other.stdout + other.stderr
    assert "ID_CONFLICT" in other.stderr
    with BankClient.from_network(network.directory, "ICBC") as icbc:
        before = icbc.balance("CNY").available
    ahead = wall_ms() + CLOCK_SKEW_MS + 60_000
    early = run_cli(
        tmp_path,
        *base[:-4],
        "--valid-until",
        str(ahead + 60_000),
        "--signed-at",
        str(ahead),
    )
    assert early.returncode == 1, early.stdout + early.stderr
    assert "INVALID_TIME" in early.stderr
    assert "ahead of the ledger's time" in early.stderr
    with BankClient.from_network(network.directory, "ICBC") as icbc:
        assert icbc.balance("CNY").available == before


def test_raw_instruction_without_a_signing_time_is_refused_invalid_time(
    network: Network,
) -> None:
    """A Pay whose protobuf header lacks signed_at (as an older client sends it), raw bytes over
    a generic channel, is refused INVALID_ARGUMENT with ErrorInfo reason INVALID_TIME."""
    now = wall_ms()
    body = Pay(f"unsigned-time-{now}", "ICBC", now + 60_000, "BOCQ", "CNY", 100, signed_at=now)
    key = network.config.load_key("ICBC")
    message = wire.envelope_to_proto(sign_as_party(Envelope.of(body), "ICBC", key))
    message.instruction.ClearField("signed_at")
    address = network.config.central_bank("PBOC").address
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/bridge.v1.CentralBank/Pay", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(message.SerializeToString(), timeout=30)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signed_at" in (error.details() or "")
    reasons = [
        info.reason
        for key_, value in error.trailing_metadata() or ()
        if key_ == "grpc-status-details-bin"
        for detail in status_pb2.Status.FromString(value).details
        if detail.Unpack(info := error_details_pb2.ErrorInfo())
    ]
    assert reasons == ["INVALID_TIME"]
