"""`cbdc-bridge demo` as an installed user runs it: the console script, from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from bridge.domain import DualPvp, Entry, ProposePvp
from bridge.log.source import open_source
from participants.broker import mosquitto_binary
from participants.network_config import NetworkConfig


def console_script() -> Path:
    """The `cbdc-bridge` entry point installed beside this interpreter."""
    script = Path(sys.executable).parent / "cbdc-bridge"
    if not script.exists():
        pytest.fail(f"the cbdc-bridge console script is not installed beside {sys.executable}")
    return script


def test_demo_runs_from_a_directory_outside_the_project(tmp_path: Path) -> None:
    """From a temporary directory the demo settles, verifies its log and its load settles."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("PYTHONPATH", None)  # nothing but the installed package
    completed = subprocess.run(
        [str(console_script()), "demo", "--load-seconds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "log verified" in output
    assert (tmp_path / "demo-network" / "network.json").exists()  # made where it was run
    load = re.search(r"steady: \d+ RPCs \([\d.]+/s\), (\d+) settlements", output)
    assert load is not None, output[-4000:]
    assert int(load.group(1)) > 0
    assert "cross-check OK" in output
    assert (tmp_path / "demo-network" / "reports" / "steady.html").exists()
    assert_every_pvp_rate_is_the_senders(tmp_path / "demo-network")
    # the scripted steps end as the demo says they do
    assert "INSUFFICIENT_FUNDS" in row_of(output, "funds refusal")
    assert "CORRIDOR_NOT_ALLOWED" in row_of(output, "policy refusal")
    assert "EXPIRED" in row_of(output, "PvP expiry")
    # the broker beside the nodes when Mosquitto is installed; said plainly when it is not
    if mosquitto_binary() is not None:
        assert re.search(r"mqtt broker\W+127\.0\.0\.1:\d+", output), output[:4000]
    else:
        assert "no MQTT broker: mosquitto is not installed" in " ".join(output.split())


def row_of(output: str, step: str) -> str:
    """The settlement table's line for one scripted step."""
    rows = [line for line in output.splitlines() if re.match(rf"\W*{re.escape(step)}\b", line)]
    assert len(rows) == 1, f"{step!r}: {rows}"
    return rows[0]


def assert_every_pvp_rate_is_the_senders(directory: Path) -> None:
    """Every PvP in the demo's log states receive / pay from its sender's side; the scripted
    dual-signed trade (BOCQ pays 2,200,000.00 CNY for 10,000,000.00 THB) states BOCQ's rate,
    about 4.55 THB per CNY, not KBANK's 0.22 CNY per THB."""
    config = NetworkConfig.load(directory)
    exponent = {cb.currency: cb.exponent for cb in config.central_banks}
    scripted = []
    with open_source(config.bridge_db) as source:
        for stored in source.entries():
            body = Entry.from_canonical_bytes(stored.data).envelope.body
            if not isinstance(body, ProposePvp | DualPvp):
                continue
            pay = Fraction(body.pay_amount, 10 ** exponent[body.pay_currency])
            receive = Fraction(body.receive_amount, 10 ** exponent[body.receive_currency])
            rate = Fraction(Decimal(body.rate))
            slack = Fraction(1, 2 * 10 ** exponent[body.receive_currency])
            slack += rate * Fraction(1, 2 * 10 ** exponent[body.pay_currency])
            assert abs(receive - pay * rate) <= slack, body
            if isinstance(body, DualPvp) and body.reference.endswith("ONEYBKK0042"):
                scripted.append(body.rate)
    assert len(scripted) == 1
    # KBANK signed 0.22; the body BOCQ submits states the inverse (to 18 decimals)
    assert abs(Fraction(Decimal(scripted[0])) - 1 / Fraction(Decimal("0.22"))) < Fraction(1, 10**17)
