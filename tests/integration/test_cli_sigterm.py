"""`cbdc-bridge` commands that start a network, stopped with SIGTERM as a service manager or a
CI runner stops them: every node they started is stopped too, none is left running.

Each command runs as a subprocess from a temporary directory; once every node it started is
listening, the test sends the command SIGTERM and, when the command has exited, looks for any
process it started that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

NODES = 5  # a bridge and four central bank nodes
UP_TIMEOUT = 180.0
EXIT_TIMEOUT = 120.0


def console_script() -> Path:
    """The `cbdc-bridge` entry point installed beside this interpreter."""
    script = Path(sys.executable).parent / "cbdc-bridge"
    if not script.exists():
        pytest.fail(f"the cbdc-bridge console script is not installed beside {sys.executable}")
    return script


def listening_nodes(command: psutil.Process) -> list[psutil.Process]:
    """The command's node processes that listen on a TCP port by now."""
    out = []
    for child in command.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "participants.node_cli" not in child.cmdline():
                continue
            if any(c.status == psutil.CONN_LISTEN for c in child.net_connections(kind="tcp")):
                out.append(child)
    return out


def survivors(started: list[psutil.Process]) -> list[str]:
    """Which of `started` still run (a zombie, dead but not yet reaped, does not count)."""
    alive = []
    for process in started:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid}: {' '.join(process.cmdline())[:120]}")
    return alive


def sigterm_once_up(argv: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run `cbdc-bridge ARGV`, SIGTERM it once its network listens; its exit code, the
    processes it started that outlived it, and its output."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    command = subprocess.Popen(
        [str(console_script()), *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        parent = psutil.Process(command.pid)
        deadline = time.monotonic() + UP_TIMEOUT
        while len(listening_nodes(parent)) < NODES:
            assert command.poll() is None, f"{argv} ended before its network was up"
            assert time.monotonic() < deadline, f"{argv}: the network did not come up"
            time.sleep(0.2)
        started = parent.children(recursive=True)
        command.send_signal(signal.SIGTERM)
        output, _ = command.communicate(timeout=EXIT_TIMEOUT)
        return command.returncode, survivors(started), output
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(10)
        for process in started:  # what the command left behind: stopped here, by pid
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--load-seconds", "0"],
        ["bench", "stream", "--pvps", "20", "--echo-seconds", "1", "--json"],
        ["chaos", "--quick", "--seed", "7", "--json", "--directory", "run"],
    ],
    ids=["demo", "bench-stream", "chaos"],
)
def test_sigterm_stops_every_node_the_command_started(tmp_path: Path, argv: list[str]) -> None:
    """SIGTERM once the network is up: the command exits, no node it started survives and
    nothing it mounted stays mounted."""
    try:
        code, left, output = sigterm_once_up(argv, tmp_path)
    finally:
        mounted = mounts_under(tmp_path)
        for mount in mounted:
            subprocess.run(["umount", "-l", mount], check=False)
    assert left == [], f"left running: {left}\n{output[-2000:]}"
    assert mounted == [], output[-2000:]
    assert code == 128 + signal.SIGTERM, output[-2000:]


def mounts_under(directory: Path) -> list[str]:
    """Mount points below `directory` (the chaos campaign mounts a small disk for its store)."""
    root = str(directory.resolve())
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p.startswith(root + "/")]
