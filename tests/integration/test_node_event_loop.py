"""A node started from the command line says which event loop it runs on, and runs on the one
its environment names: uvloop by default, asyncio's own on request; an unknown name stops it
at start with a message naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from participants.launcher import prepare_network

START_TIMEOUT = 120.0


def _first_line(network: Path, env: dict[str, str]) -> tuple[dict[str, object] | None, str]:
    """Start the bridge node of `network`, read its first output line, stop it; the line as
    JSON (None if it printed none) and whatever it wrote to stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "participants.node_cli", "bridge", "--network", str(network),
         "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=START_TIMEOUT)
    return (json.loads(line) if line else None), err


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_network(tmp_path_factory.mktemp("event-loop")).directory


@pytest.mark.parametrize(("asked", "runs_on"), [("", "uvloop"), ("asyncio", "asyncio")])
def test_the_bridge_node_runs_on_the_loop_its_environment_names(
    network: Path, asked: str, runs_on: str
) -> None:
    """The listening line names the running loop: uvloop unless asyncio is asked for."""
    line, err = _first_line(network, {"CBDC_BRIDGE_EVENT_LOOP": asked})
    assert line is not None, err
    assert line["event"] == "listening"
    assert line["loop"] == runs_on


def test_an_unknown_event_loop_stops_the_node_at_start(network: Path) -> None:
    """An unknown loop name: no listening line, a message naming the variable and choices."""
    line, err = _first_line(network, {"CBDC_BRIDGE_EVENT_LOOP": "gevent"})
    assert line is None
    assert "CBDC_BRIDGE_EVENT_LOOP='gevent'" in err
    assert "uvloop, asyncio" in err
