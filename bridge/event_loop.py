"""The event loop a node process runs on: uvloop, unless the operator asks for asyncio's own.

Every node is an asyncio program whose CPU goes mostly to gRPC's work per message, and a good
part of that is the event loop's: scheduling the callbacks and tasks that hand each completion
from gRPC's C core to Python. uvloop runs the same asyncio API on libuv with the loop itself in
C; a unary call costs a grpc.aio server about 30% fewer machine instructions on it (valgrind,
docs/performance.md). `CBDC_BRIDGE_EVENT_LOOP=asyncio` runs a node on the standard loop
instead (for comparison, or where uvloop is not wanted); any other value is refused at start.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOP_ENV", "LOOPS", "loop_name", "run"]

EVENT_LOOP_ENV = "CBDC_BRIDGE_EVENT_LOOP"
LOOPS = ("uvloop", "asyncio")

T = TypeVar("T")


def loop_name() -> str:
    """The loop asked for by the environment (uvloop when unset); raises ValueError for one
    that is not known."""
    name = os.environ.get(EVENT_LOOP_ENV, "").strip() or LOOPS[0]
    if name not in LOOPS:
        raise ValueError(f"{EVENT_LOOP_ENV}={name!r}: expected one of {', '.join(LOOPS)}")
    return name


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop of the kind `loop_name` names."""
    try:
        name = loop_name()
    except ValueError:
        main.close()  # never awaited: closed, so nothing warns about it
        raise
    if name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
