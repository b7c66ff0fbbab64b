"""`cbdc-bridge`: the command line of the bridge (network, banks, log tools, benchmarks).

Each command group lives in its own module and is mounted here.
"""

from __future__ import annotations

from bridge.node.grpc_runtime import use_poller_thread_io

# before anything imports grpc: `cbdc-bridge node ...` runs gRPC as `python -m
# participants.node_cli` does, and every other command as the nodes it talks to
use_poller_thread_io()

import signal  # noqa: E402

import typer  # noqa: E402

from loadtest.bench_cli import bench_app  # noqa: E402
from participants.bank_cli import bank_app  # noqa: E402
from participants.chaos_cli import chaos  # noqa: E402
from participants.launcher import exit_on_sigterm  # noqa: E402
from participants.log_cli import log_app  # noqa: E402
from participants.network_cli import demo, up  # noqa: E402
from participants.node_cli import node_app  # noqa: E402
from participants.pki import pki_command  # noqa: E402

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
