"""Test hooks for fault campaigns (`cbdc-bridge chaos`): off unless their variable is set.

They exist so that a campaign can put a fault exactly where it wants it, from outside the
process, without touching the machine (its clock) or guessing at timings:

- `CBDC_BRIDGE_CLOCK_OFFSET_FILE=PATH`: PATH holds an integer number of milliseconds added to
  the wall clock that the bridge's ledger time follows (re-read at most every 50 ms; a missing
  or unreadable file means 0). Writing +60000 jumps the bridge's clock a minute forward, -5000
  five seconds back. The ledger time itself stays monotonic (`MonotonicClock`).
- `CBDC_BRIDGE_CRASH_AT=before-commit|during-commit|after-commit` with
  `CBDC_BRIDGE_CRASH_AFTER_BLOCKS=N` (default 1): the node SIGKILLs itself at that point of
  the N-th block it commits after starting: before the block's transaction starts, while it
  runs (from a timer started as the commit begins, so the kill lands inside the transaction or
  its fsync), or after it is durable but before any caller is answered.

Production deployments never set these variables.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from bridge.domain import Millis
from bridge.errors import StoreError
from bridge.log.blocks import Attestation
from bridge.settlement import Prepared, SettlementEngine

CLOCK_OFFSET_FILE = "CBDC_BRIDGE_CLOCK_OFFSET_FILE"
CRASH_AT = "CBDC_BRIDGE_CRASH_AT"
CRASH_AFTER_BLOCKS = "CBDC_BRIDGE_CRASH_AFTER_BLOCKS"
CRASH_POINTS = ("before-commit", "during-commit", "after-commit")
_REREAD_NS = 50_000_000


def offset_clock(source: Callable[[], Millis]) -> Callable[[], Millis]:
    """`source`, shifted by the offset in the file named by CBDC_BRIDGE_CLOCK_OFFSET_FILE (or
    `source` itself when the variable is not set)."""
    path = os.environ.get(CLOCK_OFFSET_FILE)
    if not path:
        return source
    state = {"offset": 0, "read_at": -_REREAD_NS}

    def shifted() -> Millis:
        now_ns = time.monotonic_ns()
        if now_ns - state["read_at"] >= _REREAD_NS:
            state["read_at"] = now_ns
            try:
                with open(path, encoding="ascii") as file:
                    state["offset"] = int(file.read().strip() or 0)
            except (OSError, ValueError):
                state["offset"] = 0
        return source() + state["offset"]

    return shifted


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingEngine(SettlementEngine):
    """A settlement engine that kills its own process at one point of one block commit."""

    crash_at = ""
    crash_after_blocks = 1
    _commits = 0

    def commit(
        self, prepared: Prepared, attestations: Sequence[Attestation] = ()
    ) -> StoreError | None:
        if prepared.block is None:
            return super().commit(prepared, attestations)
        self._commits += 1
        due = self._commits == self.crash_after_blocks
        if due and self.crash_at == "before-commit":
            _die()
        if due and self.crash_at == "during-commit":
            threading.Timer(0.0005, _die).start()
        failure = super().commit(prepared, attestations)
        if due and self.crash_at in ("during-commit", "after-commit"):
            _die()
        return failure


def engine_class() -> type[SettlementEngine]:
    """`CrashingEngine` configured from the environment, or `SettlementEngine` when unset."""
    crash_at = os.environ.get(CRASH_AT, "")
    if not crash_at:
        return SettlementEngine
    if crash_at not in CRASH_POINTS:
        raise ValueError(f"{CRASH_AT} must be one of {', '.join(CRASH_POINTS)}, not {crash_at!r}")
    after = int(os.environ.get(CRASH_AFTER_BLOCKS, "1"))
    return type(
        "ConfiguredCrashingEngine",
        (CrashingEngine,),
        {"crash_at": crash_at, "crash_after_blocks": max(1, after)},
    )
