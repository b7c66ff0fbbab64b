"""`cbdc-bridge up` and `cbdc-bridge demo`: a whole network on this machine."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from participants.launcher import Network, prepare_network

console = Console()

DIRECTORY_OPTION = typer.Option(Path("demo-network"), "--network", "-n", help="Network directory.")


def show_network(network: Network) -> None:
    table = Table(title=f"bridge network {network.config.chain_id} in {network.directory}")
    table.add_column("node")
    table.add_column("address")
    table.add_column("admin (operators)")
    table.add_column("currency")
    table.add_column("banks")
    for index, address in enumerate(network.config.bridge_addresses, start=1):
        table.add_row("bridge" if index == 1 else f"bridge-{index}", address, "", "", "")
    for cb in network.config.central_banks:
        banks = ", ".join(bank.id for bank in cb.banks)
        table.add_row(cb.id, cb.address, cb.admin_address, cb.currency, banks)
    if network.broker is not None:
        table.add_row("mqtt broker", f"127.0.0.1:{network.broker.port}", "", "", "notifications")
    console.print(table)
    if network.broker is None:
        console.print(
            "[yellow]no MQTT broker: mosquitto is not installed, so this network runs without "
            "settlement notifications over MQTT[/yellow] (apt-get install mosquitto "
            "mosquitto-clients; `bank watch` without --mqtt uses the gRPC stream)."
        )
    console.print(
        f"bridge store: {_public(network.config.bridge_store) or network.config.bridge_db}"
    )


def _public(store: str) -> str:
    if not store:
        return ""
    from bridge.store.postgres import public_url

    return public_url(store)


def up(
    network_dir: Path = DIRECTORY_OPTION,
    central_banks: int = typer.Option(4, min=1, max=26, help="How many central banks."),
    banks: int = typer.Option(2, min=1, help="Banks per central bank."),
    fresh: bool = typer.Option(False, help="Start from an empty directory (deletes the old one)."),
    store: str = typer.Option(
        "", help="postgresql:// URL of the bridge's database (default: NETWORK/bridge.sqlite)."
    ),
    bridges: int = typer.Option(
        1, min=1, help="Bridge processes on that database (one leads, the others stand by)."
    ),
) -> None:
    """Start a network and leave it running until Ctrl-C."""
    if fresh and network_dir.exists():
        shutil.rmtree(network_dir)
    try:
        network = prepare_network(
            network_dir,
            central_banks=central_banks,
            banks_per_central_bank=banks,
            bridge_store=store,
            bridges=bridges,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--bridges") from error
    with network:
        show_network(network)
        console.print("[green]network is up[/green]; Ctrl-C stops every node.")
        stopped = False

        def request_stop(signum: int, frame: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, request_stop)
        try:
            while not stopped:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        console.print("stopping...")


def demo(
    network_dir: Path = DIRECTORY_OPTION,
    load_seconds: int = typer.Option(10, min=0, help="Length of the Locust load run (0: none)."),
    keep: bool = typer.Option(
        False, help="Reuse an existing network directory instead of a fresh one."
    ),
) -> None:
    """Start a demo network, settle scripted payments and PvPs, run a short load, stop."""
    from participants.demo import run_demo

    if not keep and network_dir.exists():
        shutil.rmtree(network_dir)
    network = prepare_network(network_dir)
    try:
        with network:
            show_network(network)
            ok = run_demo(network, console=console, load_seconds=load_seconds)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every node stopped[/yellow]")
        raise typer.Exit(130) from None
    console.print("all nodes stopped.")
    if not ok:
        raise typer.Exit(1)
