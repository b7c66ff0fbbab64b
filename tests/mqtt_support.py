"""Helpers of the MQTT tests: a real Mosquitto is required, and two ways to listen to it.

`MosquittoSub` runs Mosquitto's own `mosquitto_sub` (a client this project did not write) and
hands its lines over one by one. `Collector` records every message of a persistent QoS 1
session, raw, duplicates included, reconnecting while the broker is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Any

import aiomqtt
import pytest

from bridge.notify import MqttSettings
from participants.broker import mosquitto_binary
from participants.launcher import Network
from participants.sdk import BankClient, InstructionResult, NotDecided, new_instruction_id
from tests.conftest import READY_TIMEOUT


def pay_resubmitting(network: Network, amount: int, reference: str) -> InstructionResult:
    """ICBC pays BOCQ; while PBOC's link to a restarted bridge is down the answer is not
    decided, and the same instruction id is resubmitted, as a bank would."""
    instruction_id = new_instruction_id()
    with BankClient.from_network(network.directory, "ICBC") as icbc:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                return icbc.pay("BOCQ", "CNY", amount, reference, instruction_id)
            except NotDecided:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def require_mosquitto() -> None:
    """Skip without Mosquitto and its clients; under CI=true, fail instead."""
    missing = [
        name
        for name, found in (
            ("mosquitto", mosquitto_binary()),
            ("mosquitto_sub", shutil.which("mosquitto_sub")),
        )
        if found is None
    ]
    if missing:
        message = (
            f"{', '.join(missing)} not installed (apt-get install mosquitto mosquitto-clients)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class MosquittoSub:
    """`mosquitto_sub` on some topics; `line()` returns its next output line."""

    def __init__(self, settings: MqttSettings, *topics: str, extra: tuple[str, ...] = ()) -> None:
        args = ["mosquitto_sub", "-h", settings.host, "-p", str(settings.port), "-q", "1"]
        args += ["-u", str(settings.username), "-P", str(settings.password)]
        for topic in topics:
            args += ["-t", topic]
        self.process = subprocess.Popen(
            [*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 30.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"mosquitto_sub printed nothing in {timeout} s") from None
        if line is None:
            raise AssertionError(f"mosquitto_sub ended: {self.stop()}")
        return line

    def event(self, timeout: float = 30.0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.line(timeout))
        return data

    def stop(self) -> str:
        """Stop it; what it wrote on stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        assert self.process.stderr is not None
        return self.process.stderr.read()


class Collector:
    """Every message of `topic` for a persistent session named `identifier`, in arrival order."""

    def __init__(self, settings: MqttSettings, topic: str, identifier: str) -> None:
        self.settings = settings
        self.topic = topic
        self.identifier = identifier
        self.messages: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._collect())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    async def _collect(self) -> None:
        s = self.settings
        while True:
            try:
                async with aiomqtt.Client(
                    s.host,
                    s.port,
                    username=s.username,
                    password=s.password,
                    identifier=self.identifier,
                    clean_session=False,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes | bytearray)
                        with self._lock:
                            self.messages.append(json.loads(message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def seqs(self) -> list[int]:
        with self._lock:
            return [m["seq"] for m in self.messages]

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
