"""`cbdc-bridge`: the command line of the bridge (network, banks, log tools, benchmarks).

Each command group lives in its own module and is mounted here.
"""

from __future__ import annotations

import signal

import typer

from loadtest.bench_cli import bench_app
from participants.bank_cli import bank_app
from participants.chaos_cli import chaos
from participants.launcher import exit_on_sigterm
from participants.log_cli import log_app
from participants.network_cli import demo, up
from participants.node_cli import node_app
from participants.pki import pki_command

app = typer.Typer(
    name="cbdc-bridge",
    help="Multi-CBDC payment bridge: atomic PvP settlement with a verifiable settlement log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bank_app, name="bank")
app.add_typer(bench_app, name="bench")
app.add_typer(log_app, name="log")
app.add_typer(node_app, name="node")
app.command("up")(up)
app.command("demo")(demo)
app.command("pki")(pki_command)
app.command("chaos")(chaos)


def main() -> None:
    # SIGTERM (a service manager, a CI runner, `kill`) exits like Ctrl-C: nodes are stopped
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    app()


if __name__ == "__main__":
    main()
