"""What the end-to-end benchmarks share: a funded network, an echo server, CPU accounting.

Every benchmark starts its own network in a fresh directory (so runs never see each other's
ledger), measures its baseline in the same run, and stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtest.funding import fund_banks
from participants.launcher import Network, prepare_network

BENCH_FUNDING = 10**15  # minor units per bank: far more than any benchmark moves

__all__ = [
    "CpuMeter",
    "EchoServer",
    "Profiler",
    "bench_network",
    "echo_server",
]

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def bench_network(
    directory: Path | None,
    *,
    central_banks: int = 4,
    banks_per_central_bank: int = 2,
    replica_check: str = "none",
) -> Iterator[Network]:
    """A fresh, running and funded network (in a temporary directory unless one is given)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        network = prepare_network(
            directory,
            central_banks=central_banks,
            banks_per_central_bank=banks_per_central_bank,
            replica_check=replica_check,
        )
        stack.enter_context(network)
        # benchmarks measure speed, not a market: no run may stop for lack of funds
        fund_banks(network.config, BENCH_FUNDING)
        yield network


@dataclass
class EchoServer:
    process: subprocess.Popen[str]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    """`python -m loadtest.echo` on a free port, stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtest.echo", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the echo server exited with {process.wait()}")
        port = int(json.loads(line)["port"])
        yield EchoServer(process, f"127.0.0.1:{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def node_pids(network: Network) -> dict[str, int]:
    nodes = {"bridge": network.bridge, **network.central_banks}
    return {name: node.process.pid for name, node in nodes.items() if node.process is not None}


class CpuMeter:
    """CPU seconds (user + system) that a set of processes spend between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                out[name] = times.user + times.system
        return out

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.seconds = {n: end[n] - self._start.get(n, 0.0) for n in end}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class Profiler:
    """`py-spy record` of some processes for a while (flame graphs written as SVG)."""

    def __init__(self, directory: Path | None, pids: dict[str, int], seconds: float) -> None:
        self.directory = directory
        self.pids = pids
        self.seconds = seconds
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        for name, pid in self.pids.items():
            self._children.append(
                subprocess.Popen(
                    [str(py_spy), "record", "--nonblocking", "-d", str(int(self.seconds)),
                     "-r", "100", "-o", str(self.directory / f"{name}.svg"), "--pid", str(pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + self.seconds + 30
        for child in self._children:
            try:
                child.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
