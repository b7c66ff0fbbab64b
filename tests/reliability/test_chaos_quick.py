"""`cbdc-bridge chaos --quick --seed 7 --json`, run as a user runs it: the figures must be clean.

The quick profile kills the bridge (at random and before, during and after a block's commit), a
central bank node and the load client, takes a central bank node down past a PvP's deadline,
delays, loses chunks on, resets and partitions a central bank node's link to the bridge and a
bank's link to its node, jumps the bridge's clock both ways and fills the disk under the
bridge's store; on PostgreSQL it kills the leading bridge process and restarts the database;
with MQTT it stops the broker and kills the publisher while it drains, and no event may be
lost. The campaign checks, after each scenario, every invariant of the settlement promise; this test
reads its JSON. A scenario whose component this build has is never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest.pgserver import binaries
from participants.broker import mosquitto_binary
from participants.chaos.campaign import feature_present
from participants.chaos.schedule import QUICK

CLI = Path(sys.executable).parent / "cbdc-bridge"


def test_quick_campaign_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Under every kind of fault, nothing acknowledged is lost or doubled and all checks pass."""
    result = subprocess.run(
        [str(CLI), "chaos", "--quick", "--seed", "7", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["profile"] == "quick"
    assert figures["lost"] == 0
    assert figures["misplaced"] == 0
    assert figures["doubled"] == 0
    assert figures["replica_disagreements"] == 0
    assert figures["stuck_holds"] == 0
    assert figures["unrecovered"] == []
    assert figures["kills_survived"] >= QUICK.kills
    assert figures["acknowledged_checked"] > 0
    parts = figures["final_checks"]
    assert all(part["log_verified"] is True for part in parts.values()), parts
    if feature_present("postgres") and (binaries() is not None or os.environ.get("CI") == "true"):
        assert "postgres" in parts, figures["skipped"]
        assert figures["kills_by_target"].get("leading-bridge", 0) >= 1
    assert set(figures["bridge_kill_phases"]) >= {
        "random",
        "before-commit",
        "during-commit",
        "after-commit",
    }
    for scenario in figures["scenarios"]:
        assert scenario["checks"]["passed"], scenario
    assert figures["all_checks_passed"], result.stderr[-3000:]
    outage = next(f for f in figures["fault_log"] if f["kind"] == "outage")
    assert outage["finality_continued"]
    assert outage["pvp_expired_during_outage"]
    if feature_present("mqtt") and (
        mosquitto_binary() is not None or os.environ.get("CI") == "true"
    ):
        assert figures["events_lost"] == 0, figures["events"]
        assert figures["kills_by_target"].get("mqtt-publisher", 0) >= 1
        assert any(f["target"] == "broker" for f in figures["fault_log"])
    skipped = figures["skipped"]
    assert "disk-full" not in skipped or os.geteuid() != 0, skipped
    for name, reason in skipped.items():
        for feature in ("mqtt", "postgres"):
            if name.startswith(feature):
                assert not feature_present(feature), f"{name} skipped although present: {reason}"
    assert result.returncode == 0
