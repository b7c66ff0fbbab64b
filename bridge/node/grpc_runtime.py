"""How a node process runs gRPC's C core: socket I/O on the completion queue's poller thread.

grpcio 1.85 reads and writes sockets on EventEngine threads by default (the experiments
`event_engine_listener`, `event_engine_client` and `event_engine_for_all_other_endpoints`,
on by default). In a grpc.aio process each completion then crosses three threads: an
EventEngine thread reads the bytes, the aio poller thread (blocked in
`grpc_completion_queue_next`) is woken for the completion, and it wakes the event loop through
a socket pair. With these experiments off, the endpoints are iomgr's: the poller thread polls
the sockets itself inside `grpc_completion_queue_next`, one hand-off fewer per completion.
Measured on a loopback unary echo (docs/performance.md, "Change: gRPC's cost per call"):
about half the context switches and 10-15% less server CPU per call; TLS, deadlines,
keepalive and every behaviour of the calls are the same (only the thread that touches the
socket changes).

The C core reads `GRPC_EXPERIMENTS` once, when grpcio is first imported, so the setting must
be in the environment before that: `use_poller_thread_io()` is called before anything imports
grpc, at the top of `cbdc-bridge` (`participants.cli`), of each node command
(`python -m participants.node_cli`, as the launcher starts nodes), of the echo server and of
Locust's gRPC user. An operator's own `GRPC_EXPERIMENTS` wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["GRPC_EXPERIMENTS", "grpc_environment", "use_poller_thread_io"]

GRPC_EXPERIMENTS = ",".join(
    (
        "-event_engine_listener",
        "-event_engine_client",
        "-event_engine_for_all_other_endpoints",
    )
)


def grpc_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to `environ` so a process it starts runs gRPC as the nodes do (nothing
    when `environ` already names its own experiments)."""
    if "GRPC_EXPERIMENTS" in environ:
        return {}
    return {"GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}


def use_poller_thread_io() -> bool:
    """Set this process's gRPC experiments (see the module) if grpcio is not imported yet.

    True when the setting takes effect: grpcio not yet imported and no `GRPC_EXPERIMENTS` of
    the operator's own."""
    if "grpc" in sys.modules:
        return False
    extra = grpc_environment(os.environ)
    os.environ.update(extra)
    return bool(extra)
