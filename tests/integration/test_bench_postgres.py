"""`cbdc-bridge bench postgres --json`, small, run as an operator would: one JSON object with
pgbench's and the bridge's figures on the same server, failover seconds, and a verified log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.pg import require_binaries


def test_bench_postgres_small(tmp_path: Path) -> None:
    """A short run settles every PvP, finds them all in the database, survives a kill with the
    log verifying across it, and gives pgbench entries of the bridge's size."""
    require_binaries()
    script = Path(sys.executable).with_name("cbdc-bridge")
    command = [
        str(script), "bench", "postgres", "--json", "--pvps", "200", "--window", "64",
        "--pgbench-seconds", "1", "--kills", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["ok"] is True, figures
    assert figures["pgbench_tps"] > 0
    assert figures["pgbench"]["failed_transactions"] == 0
    assert figures["bridge"]["pvps_settled"] == figures["bridge"]["settled_in_database"] == 200
    assert figures["bridge"]["log"].startswith("verified")  # across the kill
    assert figures["pgbench"]["entry_bytes"] == figures["bridge"]["entry_bytes"] > 0
    assert figures["pgbench"]["clients"] == figures["bridge"]["streams"]
    assert len(figures["failover_s"]) == 1
    assert figures["ratio"] == round(figures["bridge_pvp_per_s"] / figures["pgbench_tps"], 3)
