"""PvP rates on a running network: stated from the submitter's side, never against the legs.

One network (bridge, PBOC/CNY with ICBC and BOCQ, HKMA/HKD with HSBCHK and BOCHK) runs for the
module on free loopback ports and is always stopped. The trade of the examples: ICBC pays
920.00 CNY and receives 1,000.00 HKD from HSBCHK, a rate of 1.0870 HKD per CNY from ICBC's side.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import grpc
import pytest

from bridge.domain import DualPvp, Entry, Envelope, Outcome, ProposePvp
from bridge.errors import Reason
from bridge.log.source import open_source
from bridge.signing import sign_as_party
from participants.launcher import Network, prepare_network
from participants.sdk import (
    BankClient,
    BridgeRpcError,
    CentralBankAdminClient,
    SignedDualPvp,
    new_instruction_id,
)

CNY_PAID, HKD_RECEIVED = 92_000, 100_000  # 920.00 CNY, 1,000.00 HKD
FUNDS = {"ICBC": ("CNY", 10_000_000), "HSBCHK": ("HKD", 10_000_000)}


@dataclass
class Desks:
    network: Network
    banks: dict[str, BankClient]

    @property
    def directory(self) -> Path:
        return self.network.directory

    def __getitem__(self, bank: str) -> BankClient:
        return self.banks[bank]

    def entry(self, sender: str, instruction_id: str) -> Entry:
        """The logged entry of one instruction, read from the bridge's store."""
        with open_source(self.network.config.bridge_db) as source:
            for stored in source.entries():
                entry = Entry.from_canonical_bytes(stored.data)
                body = entry.envelope.body
                if (body.sender, body.instruction_id) == (sender, instruction_id):
                    return entry
        raise AssertionError(f"no entry for {sender}/{instruction_id}")

    def log_length(self) -> int:
        with open_source(self.network.config.bridge_db) as source:
            return sum(1 for _ in source.entries())

    def balances(self) -> dict[tuple[str, str], tuple[int, int]]:
        out = {}
        for bank in ("ICBC", "HSBCHK"):
            for currency in ("CNY", "HKD"):
                balance = self.banks[bank].balance(currency)
                out[(bank, currency)] = (balance.available, balance.held)
        return out


@pytest.fixture(scope="module")
def desks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desks]:
    """A started two-jurisdiction network with ICBC and HSBCHK funded; always stopped."""
    directory = tmp_path_factory.mktemp("rates-network")
    network = prepare_network(directory, central_banks=2, banks_per_central_bank=2).start()
    banks: dict[str, BankClient] = {}
    try:
        for cb in network.config.central_banks:
            for bank in cb.banks:
                banks[bank.id] = BankClient.from_network(directory, bank.id)
                banks[bank.id].wait_ready(timeout=60)
        for bank_id, (currency, amount) in FUNDS.items():
            home = network.config.home_of(bank_id).id
            with CentralBankAdminClient.from_network(directory, home) as admin:
                assert admin.issue(bank_id, currency, amount).outcome is Outcome.ISSUED
        yield Desks(network, banks)
    finally:
        for client in banks.values():
            client.close()
        network.stop()


def assert_submitters_rate(body: DualPvp | ProposePvp) -> None:
    """The body pays 920.00 CNY for 1,000.00 HKD and its rate is 1,000 / 920 from that side."""
    assert (body.pay_currency, body.pay_amount) == ("CNY", CNY_PAID)
    assert (body.receive_currency, body.receive_amount) == ("HKD", HKD_RECEIVED)
    rate = Fraction(Decimal(body.rate))
    exact = Fraction(HKD_RECEIVED, CNY_PAID)  # 1.0869...
    assert abs(rate - exact) < Fraction(1, 10**5), f"rate {body.rate} is not receive / pay"


def test_dual_pvp_signed_by_the_counterparty_states_the_submitters_rate(desks: Desks) -> None:
    """HSBCHK quotes 0.92 from its side; the logged entry, sent by ICBC, says about 1.087."""
    offer = desks["HSBCHK"].sign_dual_pvp(
        "ICBC", pay=("HKD", HKD_RECEIVED), receive=("CNY", CNY_PAID), rate="0.92"
    )
    assert_submitters_rate(offer.body)
    result = desks["ICBC"].submit_dual_pvp(offer)
    assert result.outcome is Outcome.SETTLED
    logged = desks.entry("ICBC", result.instruction_id).envelope.body
    assert isinstance(logged, DualPvp)
    assert_submitters_rate(logged)


def cbdc_bridge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "participants.cli", *args]
    env = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_dual_sign_and_submit_log_the_submitters_rate(desks: Desks, tmp_path: Path) -> None:
    """CLI dual sign by HSBCHK, submit by ICBC (temp dir): the entry states ICBC's rate."""
    network = str(desks.directory)
    signed = cbdc_bridge(
        "bank", "dual", "sign", "ICBC", "--pay", "1,000.00 HKD", "--receive", "920.00 CNY",
        "--rate", "0.92", "--out", "offer.json", "--network", network, "--bank", "HSBCHK",
        cwd=tmp_path,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stdout + signed.stderr
    offer = SignedDualPvp.from_json((tmp_path / "offer.json").read_text())
    submitted = cbdc_bridge(
        "bank", "dual", "submit", "offer.json", "--network", network, "--bank", "ICBC",
        cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "SETTLED" in submitted.stdout
    logged = desks.entry("ICBC", offer.body.instruction_id).envelope.body
    assert isinstance(logged, DualPvp)
    assert_submitters_rate(logged)


def test_cli_dual_sign_refuses_a_rate_that_contradicts_the_amounts(
    desks: Desks, tmp_path: Path
) -> None:
    """A signer quoting the rate upside down is told so in major units, and signs nothing."""
    signed = cbdc_bridge(
        "bank", "dual", "sign", "ICBC", "--pay", "1,000.00 HKD", "--receive", "920.00 CNY",
        "--rate", "1.087", "--out", "offer.json", "--network", str(desks.directory),
        "--bank", "HSBCHK", cwd=tmp_path,
    )  # fmt: skip
    assert signed.returncode == 1, signed.stdout + signed.stderr
    assert "RATE_MISMATCH" in signed.stderr
    assert "rate 1.087 gives 1,087.00 CNY for 1,000.00 HKD, not 920.00 CNY" in signed.stderr
    assert not (tmp_path / "offer.json").exists()


def expect_rate_mismatch(desks: Desks, call: object) -> BridgeRpcError:
    """Run `call`; it must be refused RATE_MISMATCH (INVALID_ARGUMENT) and change nothing."""
    balances, length = desks.balances(), desks.log_length()
    with pytest.raises(BridgeRpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.RATE_MISMATCH)
    assert "rate 0.92 gives 846.40 HKD for 920.00 CNY, not 1,000.00 HKD" in error.message
    time.sleep(0.2)  # anything the refusal had wrongly let through would be logged by now
    assert desks.balances() == balances
    assert desks.log_length() == length
    return error


def test_proposal_with_a_contradicting_rate_is_refused(desks: Desks) -> None:
    """ProposePvp at 0.92 for 920.00 CNY against 1,000.00 HKD: RATE_MISMATCH, nothing held."""
    expect_rate_mismatch(
        desks,
        lambda: desks["ICBC"].propose_pvp(
            "HSBCHK", pay=("CNY", CNY_PAID), receive=("HKD", HKD_RECEIVED), rate="0.92"
        ),
    )


def test_dual_pvp_with_an_upside_down_rate_is_refused(desks: Desks) -> None:
    """A dual PvP stating the signer's rate instead of the submitter's is refused whole."""
    body = DualPvp(
        new_instruction_id(), "ICBC", time.time_ns() // 1_000_000 + 60_000, "HSBCHK",
        "CNY", CNY_PAID, "HKD", HKD_RECEIVED, "0.92", "upside down",
        signed_at=time.time_ns() // 1_000_000,
    )  # fmt: skip
    key = desks.network.config.load_key("HSBCHK")
    offer = SignedDualPvp.of(sign_as_party(Envelope.of(body), "HSBCHK", key))
    expect_rate_mismatch(desks, lambda: desks["ICBC"].submit_dual_pvp(offer))
    proposal = desks["ICBC"].propose_pvp(
        "HSBCHK", pay=("CNY", CNY_PAID), receive=("HKD", HKD_RECEIVED), rate="1.08696"
    )
    assert proposal.outcome is Outcome.HELD  # 920.00 x 1.08696 = 1,000.0032: within rounding
    desks["ICBC"].cancel_pvp(proposal.instruction_id)
