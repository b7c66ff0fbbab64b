"""`cbdc-bridge bank ...` against a running network: output in major units and exit codes.

The commands run in-process through typer's CliRunner (one also as a real subprocess of the
console script); one network (PBOC/CNY with ICBC and BOCQ, HKMA/HKD with HSBCHK and BOCHK) runs
for the module and is always stopped. Exit codes: 0 done, 1 refused, 2 usage or configuration,
3 unavailable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bridge.crypto import public_key_from_pem
from participants.cli import app
from participants.launcher import Network, free_ports, prepare_network
from participants.network_config import NetworkConfig
from participants.sdk import BankClient, CentralBankAdminClient

WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@dataclass
class Cli:
    """Runs `cbdc-bridge` commands against the module's network."""

    network: Network
    runner: CliRunner

    @property
    def directory(self) -> Path:
        return self.network.directory

    def __call__(self, *args: str, bank: str | None = "ICBC") -> Result:
        options = ["--network", str(self.directory)]
        if bank is not None:
            options += ["--bank", bank]
        return self.runner.invoke(app, ["bank", *args, *options], env=WIDE)

    def available(self, bank: str, currency: str) -> int:
        with BankClient.from_network(self.directory, bank) as client:
            return client.balance(currency).available


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A started, funded two-jurisdiction network and a CLI runner; always stopped."""
    directory = tmp_path_factory.mktemp("cli-network")
    network = prepare_network(directory, central_banks=2, banks_per_central_bank=2).start()
    try:
        for bank_id, cb_id, currency in (("ICBC", "PBOC", "CNY"), ("HSBCHK", "HKMA", "HKD")):
            with BankClient.from_network(directory, bank_id) as bank:
                bank.wait_ready(timeout=60)
            with CentralBankAdminClient.from_network(directory, cb_id) as admin:
                admin.issue(bank_id, currency, 100_000_000)  # 1,000,000.00
        yield Cli(network, CliRunner())
    finally:
        network.stop()


def pvp_id_of(result: Result) -> str:
    match = re.search(r"PvP id: (\S+)", result.output)
    assert match, result.output
    return match.group(1)


def test_balance_shows_major_units_with_the_currency_exponent(cli: Cli) -> None:
    """`balance` prints a table with amounts like 1,000,000.00 CNY and exits 0."""
    result = cli("balance")
    assert result.exit_code == 0, result.output
    assert "ICBC balances" in result.output
    assert "CNY" in result.output
    assert re.search(r"\d{1,3}(,\d{3})*\.\d\d CNY", result.output)


def test_pay_in_major_units_moves_the_exact_minor_amount(cli: Cli) -> None:
    """`pay BOCQ 1,234.56 CNY` settles 123456 fen and exits 0."""
    before = cli.available("BOCQ", "CNY")
    result = cli("pay", "BOCQ", "1,234.56", "CNY", "--reference", "INV-CQ-2025-0042")
    assert result.exit_code == 0, result.output
    assert "paid 1,234.56 CNY to BOCQ" in result.output
    assert "SETTLED" in result.output
    assert cli.available("BOCQ", "CNY") == before + 123_456


def test_pay_with_wait_final_reports_the_final_block(cli: Cli) -> None:
    """`pay --wait-final` returns once the payment's block is final."""
    result = cli("pay", "BOCQ", "1", "CNY", "--wait-final")
    assert result.exit_code == 0, result.output
    assert "(final)" in result.output


def test_too_many_decimals_is_a_usage_error(cli: Cli) -> None:
    """An amount finer than the currency's minor unit exits 2 and sends nothing."""
    before = cli.available("ICBC", "CNY")
    result = cli("pay", "BOCQ", "1.005", "CNY")
    assert result.exit_code == 2
    assert "too many decimals" in result.output
    assert cli.available("ICBC", "CNY") == before


def test_refusal_exits_1_with_reason_code(cli: Cli) -> None:
    """A payment the bridge refuses exits 1 and prints the reason code and message."""
    result = cli("pay", "ICBC", "99,999,999", "CNY", bank="BOCQ")
    assert result.exit_code == 1
    assert "INSUFFICIENT_FUNDS" in result.output
    assert "FAILED_PRECONDITION" in result.output


@pytest.mark.parametrize(
    ("args", "bank", "message"),
    [
        (("pay", "BOCQ", "1", "XYZ"), "ICBC", "unknown currency XYZ"),
        (("pay", "BOCQ", "abc", "CNY"), "ICBC", "not a decimal amount"),
        (("pay", "BOCQ", "-5", "CNY"), "ICBC", ""),
        (("balance",), "NOSUCHBANK", "no bank NOSUCHBANK"),
        (("balance",), None, "--bank"),
        (("pvp", "propose", "HSBCHK", "--pay", "10", "--receive", "11 HKD"), "ICBC", "currency"),
    ],
)
def test_usage_and_configuration_errors_exit_2(
    cli: Cli, args: tuple[str, ...], bank: str | None, message: str
) -> None:
    """Bad amounts, unknown currencies or banks and missing options exit 2."""
    result = cli(*args, bank=bank)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_network_directory_exits_2(cli: Cli, tmp_path: Path) -> None:
    """A network directory without network.json exits 2."""
    result = cli.runner.invoke(
        app, ["bank", "balance", "--network", str(tmp_path), "--bank", "ICBC"], env=WIDE
    )
    assert result.exit_code == 2
    assert "cannot read the network" in result.output


def test_unreachable_node_exits_3(cli: Cli, tmp_path: Path) -> None:
    """When the bank's node does not answer, the command exits 3."""
    copy = tmp_path / "network"
    shutil.copytree(cli.directory / "keys", copy / "keys")
    data = json.loads((cli.directory / "network.json").read_text())
    for cb in data["central_banks"]:
        cb["port"] = free_ports(1)[0]
    (copy / "network.json").write_text(json.dumps(data))
    result = cli.runner.invoke(
        app,
        ["bank", "balance", "--network", str(copy), "--bank", "ICBC", "--timeout", "1"],
        env=WIDE,
    )
    assert result.exit_code == 3, result.output
    assert "UNAVAILABLE" in result.output


def test_pvp_propose_status_and_accept(cli: Cli) -> None:
    """`pvp propose` holds our leg; `pvp status` shows the terms and when the proposer signed
    them; `pvp accept` settles both."""
    hkd_before = cli.available("ICBC", "HKD")
    signed_at = time.time_ns() // 1_000_000 - 1_000  # a second ago
    proposed = cli(
        "pvp",
        "propose",
        "HSBCHK",
        "--pay",
        "1,000.00 CNY",
        "--receive",
        "1,085.20 HKD",
        "--signed-at",
        str(signed_at),
    )
    assert proposed.exit_code == 0, proposed.output
    assert "HELD" in proposed.output
    pvp_id = pvp_id_of(proposed)
    status = cli("pvp", "status", "ICBC", pvp_id, bank="HSBCHK")
    assert status.exit_code == 0, status.output
    assert "1,000.00 CNY" in status.output
    assert "1,085.20 HKD" in status.output
    assert "1.0852" in status.output  # the rate implied by the amounts
    assert "HELD" in status.output
    stamp = datetime.fromtimestamp(signed_at / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert "Signed at" in status.output
    assert stamp[:-3] + "Z" in status.output
    accepted = cli("pvp", "accept", "ICBC", pvp_id, bank="HSBCHK")
    assert accepted.exit_code == 0, accepted.output
    assert "SETTLED" in accepted.output
    assert cli.available("ICBC", "HKD") == hkd_before + 108_520
    settled = cli("pvp", "status", "ICBC", pvp_id)
    assert "SETTLED" in settled.output


def test_pvp_reject_and_cancel(cli: Cli) -> None:
    """`pvp reject` and `pvp cancel` close a proposal and release the hold."""
    ids = []
    for _ in range(2):
        proposed = cli(
            "pvp", "propose", "HSBCHK", "--pay", "5 CNY", "--receive", "5 HKD", "--rate", "1"
        )
        assert proposed.exit_code == 0, proposed.output
        ids.append(pvp_id_of(proposed))
    rejected = cli("pvp", "reject", "ICBC", ids[0], bank="HSBCHK")
    assert rejected.exit_code == 0, rejected.output
    assert "REJECTED" in rejected.output
    cancelled = cli("pvp", "cancel", ids[1])
    assert cancelled.exit_code == 0, cancelled.output
    assert "CANCELLED" in cancelled.output
    again = cli("pvp", "cancel", ids[1], "--id", "cancel-again")
    assert again.exit_code == 1
    assert "PVP_NOT_PENDING" in again.output


def test_dual_sign_to_a_file_and_submit(cli: Cli, tmp_path: Path) -> None:
    """`dual sign` writes the counterparty's signed side; `dual submit` settles both legs."""
    offer = tmp_path / "offer.json"
    signed = cli(
        "dual",
        "sign",
        "ICBC",
        "--pay",
        "200 HKD",
        "--receive",
        "180 CNY",
        "--out",
        str(offer),
        bank="HSBCHK",
    )
    assert signed.exit_code == 0, signed.output
    assert json.loads(offer.read_text())["body"]["sender"] == "ICBC"
    before = cli.available("HSBCHK", "CNY")
    submitted = cli("dual", "submit", str(offer))
    assert submitted.exit_code == 0, submitted.output
    assert "SETTLED" in submitted.output
    assert cli.available("HSBCHK", "CNY") == before + 18_000
    wrong = cli("dual", "submit", str(offer), bank="BOCQ")
    assert wrong.exit_code == 1
    assert "NOT_A_PARTY" in wrong.output


def test_issue_request_redeem_status_and_history(cli: Cli) -> None:
    """`issue-request`, `redeem`, `status` and `history` exit 0 and show what happened."""
    issued = cli("issue-request", "500", "--wait-final", bank="BOCQ")
    assert issued.exit_code == 0, issued.output
    assert "PBOC issued 500.00 CNY to BOCQ" in issued.output
    assert "(final)" in issued.output
    redeemed = cli("redeem", "100.5", "CNY", "--id", "redeem-bocq-1", bank="BOCQ")
    assert redeemed.exit_code == 0, redeemed.output
    assert "REDEEMED" in redeemed.output
    status = cli("status", "redeem-bocq-1", "--wait-final", bank="BOCQ")
    assert status.exit_code == 0, status.output
    assert "(final)" in status.output
    history = cli("history", bank="BOCQ")
    assert history.exit_code == 0, history.output
    assert "redeem" in history.output
    assert "100.50 CNY" in history.output
    assert "500.00 CNY" in history.output


def test_watch_streams_count_settlements(cli: Cli) -> None:
    """`watch --from-seq 1 --count 2` prints two settlements and exits 0."""
    result = cli("watch", "--from-seq", "1", "--count", "2", bank="HSBCHK")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "issue" in lines[0]


def test_keys_generates_shows_and_protects_a_key(cli: Cli, tmp_path: Path) -> None:
    """`keys PATH` writes a key pair and prints its public key; it never overwrites silently."""
    path = tmp_path / "NEWBANK.pem"
    made = cli.runner.invoke(app, ["bank", "keys", str(path)], env=WIDE)
    assert made.exit_code == 0, made.output
    public = public_key_from_pem(path.with_suffix(".pub.pem").read_bytes())
    assert public.hex() in made.output
    shown = cli.runner.invoke(app, ["bank", "keys", str(path), "--show"], env=WIDE)
    assert shown.exit_code == 0
    assert public.hex() in shown.output
    again = cli.runner.invoke(app, ["bank", "keys", str(path)], env=WIDE)
    assert again.exit_code == 2
    assert public_key_from_pem(path.with_suffix(".pub.pem").read_bytes()) == public


def test_console_script_runs_as_a_process(cli: Cli) -> None:
    """The installed entry point answers `bank balance` with exit code 0."""
    command = [sys.executable, "-m", "participants.cli", "bank", "balance"]
    command += ["--currency", "CNY", "--network", str(cli.directory), "--bank", "ICBC"]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "CNY" in completed.stdout
    assert NetworkConfig.load(cli.directory).home_of("ICBC").id == "PBOC"
