"""The faults a campaign injects: process kills and pauses, a TCP proxy that delays, resets or
black-holes a link, a full disk under the bridge's store, and a jump of the bridge's clock.

Network faults go through `FaultProxy`, an asyncio TCP proxy placed on a link by giving the
client the proxy's port (a central bank node reaches the bridge through a network directory
whose bridge port is the proxy's; a bank's load client reaches its node through `--via`).
Within one TCP connection bytes cannot be reordered, so "reordering" is not a fault a TCP link
can show (a reordered segment only holds up the ones behind it: a delay). Loss shows as what
TCP turns it into: a lost segment is resent after a retransmission timeout (0.2 s, doubled on
each further loss), so in `loss` mode each chunk is, with the given probability, held for
those timeouts; broken connections are `reset`. A partition is a black hole: connections are
accepted and nothing ever comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("pass", "delay", "loss", "reset", "blackhole")
FIRST_RTO = 0.2  # seconds: TCP's minimum retransmission timeout on Linux
MAX_RESENDS = 3  # a chunk lost this many times in a row goes through on the next try


# ---------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """A child process in its own process group, killed and restarted by the campaign."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(extra_env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()


def rss_bytes(pid: int | None) -> int:
    """Resident memory of a process (0 when it is gone)."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


# ---------------------------------------------------------------------------- the TCP proxy


class FaultProxy:
    """A TCP proxy on 127.0.0.1 with a switchable fault mode, served from its own thread."""

    def __init__(self, name: str, target: tuple[str, int], port: int) -> None:
        self.name = name
        self.target = target
        self.port = port
        self.mode = "pass"
        self.delay = 0.0
        self.loss = 0.0
        self._rng = random.Random(port)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    def set(self, mode: str, delay: float = 0.0, loss: float = 0.0) -> None:
        """Switch mode: pass, delay (each chunk held `delay` s), loss (each chunk lost with
        probability `loss`, resent after TCP's retransmission timeouts), reset (every
        connection is closed with a reset at once, now and while the mode lasts), blackhole
        (accepted, never answered)."""
        if mode not in MODES:
            raise ValueError(f"proxy mode must be one of {MODES}")
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss is a probability, from 0 to 1")
        self.mode, self.delay, self.loss = mode, delay, loss
        if mode == "reset":
            self._loop.call_soon_threadsafe(self._reset_all)

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _abort(writer)
            return
        while self.mode == "blackhole":
            # a partition: the connection is not answered until it heals (as a retransmitted
            # SYN gets through then); what the client sent waits in the socket's buffer
            await asyncio.sleep(0.05)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            _abort(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            while self.mode == "blackhole":
                await asyncio.sleep(0.05)  # a partition: bytes go nowhere, nothing comes back
            if self.mode == "delay" and self.delay > 0:
                await asyncio.sleep(self.delay)
            if self.mode == "loss":
                await asyncio.sleep(self._retransmission_wait())
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    def _retransmission_wait(self) -> float:
        """How long a chunk waits for its resends: each try is lost with probability `loss`."""
        wait, timeout = 0.0, FIRST_RTO
        for _ in range(MAX_RESENDS):
            if self._rng.random() >= self.loss:
                break
            wait += timeout
            timeout *= 2
        return wait

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._reset_all()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


# ---------------------------------------------------------------------------- disk and clock


class SmallDisk:
    """A small tmpfs mounted under the bridge's store (root only), that can be filled up."""

    def __init__(self, directory: Path, size_mb: int) -> None:
        self.directory = directory
        self.size_mb = size_mb
        self.mounted = False
        self.filler = directory / "filler.bin"

    def mount(self) -> str | None:
        """Mount it; the reason it cannot be mounted, or None."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return "mounting a tmpfs needs root"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return f"mount -t tmpfs refused: {result.stderr.strip() or result.returncode}"
        self.mounted = True
        return None

    def fill(self, leave_bytes: int = 0) -> int:
        """Fill the disk up to `leave_bytes` free; the bytes written."""
        free = shutil.disk_usage(self.directory).free
        size = max(0, free - leave_bytes)
        with self.filler.open("wb") as out:
            block = b"\0" * (1 << 20)
            left = size
            try:
                while left > 0:
                    left -= out.write(block[: min(left, len(block))])
            except OSError:
                pass  # full already
        return size

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], check=False)
            self.mounted = False


class ClockOffset:
    """The file the bridge reads its clock offset from (`bridge.node.fault_hooks`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, offset_ms: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{offset_ms}\n", encoding="ascii")
        temporary.replace(self.path)
