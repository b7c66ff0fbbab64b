"""`cbdc-bridge node ...`: run one node of a network in the foreground (one process each)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer

from bridge import event_loop
from bridge.core.ledger import SignatureCheck
from bridge.structured_logging import configure_logging

node_app = typer.Typer(
    help="Run one node (bridge or central bank) in the foreground.", no_args_is_help=True
)

NETWORK_OPTION = typer.Option(
    Path("demo-network"), "--network", "-n", help="Network directory (network.json, keys/)."
)

# the default of bridge.node.shedding.DEFAULT_MAX_IN_FLIGHT, repeated so --help stays light
MAX_IN_FLIGHT_OPTION = typer.Option(
    256,
    min=1,
    help="Most unary calls worked on at once; more are refused at once with RESOURCE_EXHAUSTED "
    "(reason OVERLOADED, retryable, with a pushback hint).",
)


def announce(role: str, name: str) -> Callable[[int], None]:
    """Print one JSON line when listening: launchers read it to know the node is up (and an
    operator which event loop it runs on)."""

    def on_listening(port: int) -> None:
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        line = {"event": "listening", "role": role, "name": name, "port": port, "loop": loop}
        print(json.dumps(line), flush=True)

    return on_listening


METRICS_PORT_OPTION = typer.Option(
    -1,
    "--metrics-port",
    help="Serve Prometheus metrics (stage timers, queue depth, block sizes) on "
    "127.0.0.1:PORT/metrics; 0 picks a free port; default: off.",
)


def serve_metrics(role: str, name: str, port: int) -> None:
    """Start the metrics endpoint (if asked) and print one JSON line with its port."""
    if port < 0:
        return
    from bridge.metrics import serve

    bound = serve(port)
    print(json.dumps({"event": "metrics", "role": role, "name": name, "port": bound}), flush=True)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a node's `main` until SIGINT or SIGTERM."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        event_loop.loop_name()  # an unknown CBDC_BRIDGE_EVENT_LOOP stops the node here
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    event_loop.run(runner())


@node_app.command("bridge")
def bridge_node(
    network: Path = NETWORK_OPTION,
    port: int = typer.Option(
        -1, help="Port (default: the one in network.json; 0 picks a free one)."
    ),
    db: Path | None = typer.Option(None, help="SQLite file (default: NETWORK/bridge.sqlite)."),
    store: str | None = typer.Option(
        None,
        help="postgresql:// URL: run as one of several bridge processes sharing that database "
        "(default: the network's bridge_store, else the SQLite file).",
    ),
    max_batch: int = typer.Option(1000, help="Most instructions settled in one block."),
    block_interval_ms: float = typer.Option(
        0.0,
        min=0,
        help="Least milliseconds between the starts of two blocks: under load a block gathers "
        "what arrives meanwhile (fewer, bigger blocks); an idle bridge never waits. 0: off.",
    ),
    max_in_flight: int = MAX_IN_FLIGHT_OPTION,
    mqtt: bool = typer.Option(
        True, help="Publish settlement notifications to the network's MQTT broker, if it has one."
    ),
    metrics_port: int = METRICS_PORT_OPTION,
) -> None:
    """Run the bridge ledger node: sequencer, store (SQLite or PostgreSQL), block stream, MQTT
    publisher (while leading)."""
    from bridge.node.server import BridgeNodeSettings, run_bridge_node
    from bridge.notify import BRIDGE_USER
    from participants.network_config import NetworkConfig

    configure_logging("bridge")
    config = NetworkConfig.load(network)
    settings = BridgeNodeSettings(
        db=db or config.bridge_db,
        genesis=config.genesis(),
        port=config.bridge_port if port < 0 else port,
        pki=None if config.tls is None else config.directory / config.tls.directory,
        max_batch=max_batch,
        block_interval=block_interval_ms / 1000,
        store=store or config.bridge_store,
        max_in_flight=max_in_flight,
        mqtt=config.mqtt_settings(BRIDGE_USER) if mqtt else None,
    )
    serve_metrics("bridge", "bridge", metrics_port)
    run_until_signalled(
        lambda stop: run_bridge_node(settings, stop=stop, on_listening=announce("bridge", "bridge"))
    )


@node_app.command("central-bank")
def central_bank_node(
    central_bank: str = typer.Argument(..., help="Central bank id, e.g. PBOC."),
    network: Path = NETWORK_OPTION,
    port: int = typer.Option(-1, help="Port (default: the one in network.json)."),
    admin_port: int = typer.Option(
        -1, help="Operators' admin port (default: admin_port in network.json)."
    ),
    replica_check: str = typer.Option(
        "endorsements", help="Signature checks when replaying blocks: none, endorsements or all."
    ),
    max_in_flight: int = MAX_IN_FLIGHT_OPTION,
    max_stream_instructions: int = typer.Option(
        16384,  # participants.central_bank.service.DEFAULT_MAX_STREAM_INSTRUCTIONS
        min=1,
        help="Most instructions worked on at once over all SubmitStream calls together (each "
        "call also keeps its own window, unread answers included); a request past it is "
        "answered at once, each of its instructions RESOURCE_EXHAUSTED (reason OVERLOADED, "
        "retryable).",
    ),
    attest_interval_ms: float = typer.Option(
        50.0,
        min=0,
        help="Least milliseconds between two attestations: each attests the newest replayed "
        "height, which covers every block up to it.",
    ),
    metrics_port: int = METRICS_PORT_OPTION,
) -> None:
    """Run a central bank node: serve its banks, endorse their legs, attest blocks."""
    from participants.central_bank.node import CentralBankNodeSettings, run_central_bank_node

    configure_logging(central_bank)
    try:
        check = SignatureCheck(replica_check)
    except ValueError:
        print(
            f"--replica-check must be none, endorsements or all, not {replica_check!r}",
            file=sys.stderr,
        )
        raise typer.Exit(2) from None
    settings = CentralBankNodeSettings(
        network=network,
        central_bank=central_bank,
        port=None if port < 0 else port,
        admin_port=None if admin_port < 0 else admin_port,
        replica_check=check,
        max_in_flight=max_in_flight,
        max_stream_instructions=max_stream_instructions,
        attest_interval=attest_interval_ms / 1000,
    )
    serve_metrics("central-bank", central_bank, metrics_port)
    run_until_signalled(
        lambda stop: run_central_bank_node(
            settings, stop=stop, on_listening=announce("central-bank", central_bank)
        )
    )


if __name__ == "__main__":
    node_app()
