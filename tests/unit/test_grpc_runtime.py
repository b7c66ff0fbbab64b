"""The nodes' gRPC runtime setting (`bridge.node.grpc_runtime`): what it sets, and when."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from bridge.node.grpc_runtime import GRPC_EXPERIMENTS, grpc_environment


def test_the_experiments_are_added_when_the_environment_names_none() -> None:
    """Without GRPC_EXPERIMENTS, the EventEngine endpoint experiments are switched off."""
    assert grpc_environment({"PATH": "/bin"}) == {"GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}
    assert set(GRPC_EXPERIMENTS.split(",")) == {
        "-event_engine_listener",
        "-event_engine_client",
        "-event_engine_for_all_other_endpoints",
    }


def test_an_operators_own_experiments_win() -> None:
    """A GRPC_EXPERIMENTS already in the environment (even empty) is left as it is."""
    assert grpc_environment({"GRPC_EXPERIMENTS": "tcp_rcv_lowat"}) == {}
    assert grpc_environment({"GRPC_EXPERIMENTS": ""}) == {}


PROBE = textwrap.dedent(
    """
    import asyncio, os, sys

    from bridge.node.grpc_runtime import use_poller_thread_io

    applied = use_poller_thread_io()
    import grpc

    again = use_poller_thread_io()  # grpc is imported now: too late, nothing changes


    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.T", {"E": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await channel.unary_unary("/t.T/E")(b"ping", timeout=10)
        await server.stop(None)
        return answer


    answer = asyncio.run(main())
    print(applied, again, os.environ.get("GRPC_EXPERIMENTS"), answer.decode())
    """
)


def _probe(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_setting_applies_before_grpc_is_imported_and_the_core_knows_it() -> None:
    """Set before grpc's import: a loopback call works and gRPC knows every experiment named."""
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    done = _probe(environ)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "False", GRPC_EXPERIMENTS, "ping"]
    # a grpcio that no longer has one of these experiments says so on stderr
    assert "Unknown experiment" not in done.stderr, done.stderr[-3000:]


def test_the_setting_leaves_an_operators_experiments_alone() -> None:
    """With GRPC_EXPERIMENTS already set, the process keeps it and is not changed."""
    done = _probe({**os.environ, "GRPC_EXPERIMENTS": "tcp_rcv_lowat"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "False", "tcp_rcv_lowat", "ping"]


def test_the_cbdc_bridge_command_sets_the_nodes_grpc_experiments_before_grpc_loads() -> None:
    """`cbdc-bridge` (participants.cli) sets the experiments before grpc is imported, so
    `cbdc-bridge node ...` runs gRPC as `python -m participants.node_cli` does."""
    code = (
        "import os, sys; import participants.cli; "
        "print(os.environ.get('GRPC_EXPERIMENTS')); print('grpc' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [GRPC_EXPERIMENTS, "True"]
