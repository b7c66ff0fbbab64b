"""Stopping a network is not cut short by a SIGTERM that arrives while it runs: every process
is stopped, and the program then exits as the SIGTERM asked."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from participants.launcher import Network, NodeProcess, exit_on_sigterm
from participants.network_config import NetworkConfig


def _process(name: str, command: list[str], tmp_path: Path) -> NodeProcess:
    node = NodeProcess(name, [], tmp_path / f"{name}.log")
    node.process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE)
    return node


def test_a_sigterm_during_the_stop_of_a_network_leaves_no_process_running(
    tmp_path: Path,
) -> None:
    """A SIGTERM lands while the first central bank node is still draining (its own SIGTERM
    handler takes a second): the bridge after it is stopped too, then SystemExit(143)."""
    draining = ["bash", "-c", "trap 'sleep 1; exit 0' TERM; sleep 60 & wait"]
    first = _process("PBOC", draining, tmp_path)
    bridge = _process("bridge", ["sleep", "60"], tmp_path)
    network = Network(
        config=NetworkConfig.__new__(NetworkConfig), bridge=bridge, central_banks={"PBOC": first}
    )
    time.sleep(0.3)  # the trap is installed
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(SystemExit) as exited:
            network.stop()
        left_running = [n.name for n in (first, bridge) if n.process and n.process.poll() is None]
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
        for node in (first, bridge):
            if node.process is not None and node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGKILL)
    assert exited.value.code == 128 + signal.SIGTERM
    assert left_running == []
