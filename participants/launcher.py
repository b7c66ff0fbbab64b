"""Start a whole bridge network as separate processes on free loopback ports, and stop it.

Each node is `python -m participants.node_cli ...` (`cbdc-bridge node ...` without the
heavier command groups) in its own process group, logging JSON to
NETWORK/logs/<name>.log. A node is ready when it has printed its `listening` line and its gRPC
health check answers SERVING. `stop()` sends SIGTERM (graceful: in-flight blocks commit), then
SIGKILL after a grace period; it is also called on exit, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.tls import CHANNEL_OPTIONS_TLS, channel_credentials
from participants.broker import Broker, mosquitto_binary
from participants.network_config import NetworkConfig, generate_network

READY_TIMEOUT = 60.0


# Below the kernel's ephemeral range (32768-60999 by default), so a port we pick cannot be
# taken by some client's outgoing connection between our check and the node's bind.
PORT_RANGE = (20000, 32000)


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports on 127.0.0.1 that are free now, drawn at random from PORT_RANGE."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(*PORT_RANGE)
        if port in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: end the program as an orderly exit (SystemExit), so that every
    `with network` and `finally` on the way out stops the processes it started (by default
    Python dies at once and leaves them running). A second SIGTERM is ignored: the cleanup
    must not be cut short."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold SIGTERM off while processes are being stopped: an exit raised half-way through a
    cleanup would leave the processes after it running. A SIGTERM that arrived meanwhile is
    delivered again once the cleanup is done (to the handler that was in place)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if arrived:
            signal.raise_signal(signal.SIGTERM)


@dataclass
class NodeProcess:
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0  # the node's Prometheus endpoint, when started with --metrics-port

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "participants.node_cli", *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()

    def wait_listening(self, deadline: float) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            chunk = self.process.stdout.read()
            if chunk:
                buffer += chunk
                for line in buffer.splitlines():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if event.get("event") == "metrics":
                            self.metrics_port = int(event["port"])
                        if event.get("event") == "listening":
                            self.port = int(event["port"])
                            return
            time.sleep(0.02)
        raise TimeoutError(
            f"{self.name} did not start within {READY_TIMEOUT} s; see {self.log_path}"
        )

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_serving(
    address: str, deadline: float, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Wait until `address` answers its health check SERVING (over mutual TLS if given)."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS_TLS)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{address} is not SERVING")


@dataclass
class Network:
    """A running network; a context manager that always stops its processes."""

    config: NetworkConfig
    bridge: NodeProcess
    central_banks: dict[str, NodeProcess] = field(default_factory=dict)
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    # further bridge processes on the same PostgreSQL database (standing by for the leader)
    standby_bridges: list[NodeProcess] = field(default_factory=list)
    broker: Broker | None = None  # MQTT notifications; None when mosquitto is not installed

    @property
    def directory(self) -> Path:
        return self.config.directory

    def start(self) -> Network:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            if self.broker is not None:
                self.broker.start()
            self.bridge.start(env)
            self.bridge.wait_listening(deadline)
            for node in self.standby_bridges:
                node.start(env)
            for node in self.standby_bridges:
                node.wait_listening(deadline)
            for node in self.central_banks.values():
                node.start(env)
            for node in self.central_banks.values():
                node.wait_listening(deadline)
            credentials = None
            if self.config.tls is not None:  # any certificate of the network's CA will do
                pki = self.directory / self.config.tls.directory
                credentials = channel_credentials(pki, "bridge")
            wait_serving(self.config.bridge_address, deadline, credentials)
            for cb in self.config.central_banks:
                wait_serving(cb.address, deadline, credentials)
                wait_serving(cb.admin_address, deadline, credentials)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_central_bank(self, central_bank: str) -> None:
        node = self.central_banks[central_bank]
        node.start({**os.environ, "PYTHONUNBUFFERED": "1"})
        node.wait_listening(time.monotonic() + READY_TIMEOUT)

    def restart_bridge(self) -> None:
        self.bridge.start({**os.environ, "PYTHONUNBUFFERED": "1"})
        self.bridge.wait_listening(time.monotonic() + READY_TIMEOUT)

    def stop(self) -> None:
        with sigterm_held():
            for node in self.central_banks.values():
                node.signal(signal.SIGTERM)
            for node in self.central_banks.values():
                node.stop()
            for node in self.standby_bridges:
                node.signal(signal.SIGTERM)
            for node in self.standby_bridges:
                node.stop()
            self.bridge.stop()
            if self.broker is not None:
                self.broker.stop()

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def prepare_network(
    directory: Path,
    *,
    central_banks: int = 4,
    banks_per_central_bank: int = 2,
    quorum: int | None = None,
    replica_check: str = "endorsements",
    bridge_store: str = "",
    bridges: int = 1,
    mqtt: bool = True,
    metrics: bool = False,
) -> Network:
    """Generate (or reuse) the network in `directory` on fresh free ports; not started yet.

    With a postgresql:// `bridge_store`, `bridges` bridge processes share that database; their
    ports are the last `bridges - 1` ports drawn, after the bridge's and the central banks'.
    With `mqtt` and Mosquitto installed, the network gets a broker on a free port too.
    With `metrics`, every node serves Prometheus metrics on a free port (`metrics_port`)."""
    if (directory / "network.json").exists():
        config = NetworkConfig.load(directory)
        bridges = max(bridges, len(config.bridge_ports))  # as many as it was set up with
        ports = free_ports(2 * len(config.central_banks) + bridges + 1)
        mqtt_port = ports.pop()
        config = _with_ports(config, ports, bridges)
        config.write_mqtt_credentials()
    else:
        ports = free_ports(2 * central_banks + bridges + 1)
        mqtt_port = ports.pop()
        config = generate_network(
            directory,
            central_banks=central_banks,
            banks_per_central_bank=banks_per_central_bank,
            ports=ports[: 2 * central_banks + 1],
            quorum=quorum,
        )
    if bridges > 1 and not (bridge_store or config.bridge_store).startswith(
        ("postgresql://", "postgres://")
    ):
        raise ValueError("several bridge processes need a postgresql:// bridge store")
    if bridge_store or bridges > 1:
        config = replace(
            config,
            bridge_store=bridge_store or config.bridge_store,
            bridge_ports=_bridge_ports(ports, bridges),
        )
    with_broker = mqtt and mosquitto_binary() is not None
    config = replace(config, mqtt_port=mqtt_port if with_broker else 0)
    config.save()
    broker = Broker(config.mqtt_directory, config.mqtt_port) if with_broker else None
    logs = directory / "logs"
    network_args = ["--network", str(directory)]
    if metrics:
        network_args += ["--metrics-port", "0"]
    bridge = NodeProcess("bridge", ["bridge", *network_args], logs / "bridge.log")
    standby_bridges = [
        NodeProcess(
            f"bridge-{i + 1}",
            ["bridge", *network_args, "--port", str(port)],
            logs / f"bridge-{i + 1}.log",
        )
        for i, port in enumerate(config.bridge_ports[1:], start=1)
    ]
    nodes = {
        cb.id: NodeProcess(
            cb.id,
            ["central-bank", cb.id, *network_args, "--replica-check", replica_check],
            logs / f"{cb.id}.log",
        )
        for cb in config.central_banks
    }
    return Network(config, bridge, nodes, standby_bridges=standby_bridges, broker=broker)


def _bridge_ports(ports: list[int], bridges: int) -> tuple[int, ...]:
    """Every bridge process's port: the first drawn, then the last `bridges - 1`."""
    return (ports[0], *ports[len(ports) - bridges + 1 :]) if bridges > 1 else ()


def _with_ports(config: NetworkConfig, ports: list[int], bridges: int = 1) -> NetworkConfig:
    count = len(config.central_banks)
    banks = tuple(
        replace(cb, port=port, admin_port=admin_port)
        for cb, port, admin_port in zip(
            config.central_banks,
            ports[1 : count + 1],
            ports[count + 1 : 2 * count + 1],
            strict=True,
        )
    )
    return replace(
        config,
        bridge_port=ports[0],
        central_banks=banks,
        bridge_ports=_bridge_ports(ports, bridges),
    )
