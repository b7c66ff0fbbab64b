"""`cbdc-bridge demo` as an installed user runs it: the console script, from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def console_script() -> Path:
    """The `cbdc-bridge` entry point installed beside this interpreter."""
    script = Path(sys.executable).parent / "cbdc-bridge"
    if not script.exists():
        pytest.fail(f"the cbdc-bridge console script is not installed beside {sys.executable}")
    return script


def test_demo_runs_from_a_directory_outside_the_project(tmp_path: Path) -> None:
    """From a fresh temporary directory the demo settles its script, verifies the log, and its
    Locust load settles trades that the cross-check finds in the ledger."""
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
