"""Test hooks for fault campaigns (`cbdc-bridge chaos`): off unless their variable is set.

They exist so that a campaign can put a fault exactly where it wants it, from outside the
process, without touching the machine (its clock) or guessing at timings:

- `CBDC_BRIDGE_CLOCK_OFFSET_FILE=PATH`: PATH holds an integer number of milliseconds added to
  the wall clock that the bridge's ledger time follows (re-read at most every 50 ms; a missing
  or unreadable file means 0). Writing +60000 jumps the bridge's clock a minute forward, -5000
  five seconds back. The ledger time itself stays monotonic (`MonotonicClock`).
- `CBDC_BRIDGE_CRASH_FILE=PATH`: when PATH exists and reads `PHASE N` (PHASE one of
  `before-commit`, `during-commit`, `after-commit`), the node removes it and SIGKILLs itself at
  that point of the N-th block it commits from then on: before the block's transaction starts,
  while it runs (from a timer started as the commit begins, so the kill lands inside the
  transaction or its fsync), or after the block is durable but before any caller is answered.
  The file is looked at once per block commit.

Production deployments never set these variables.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge.domain import Millis
from bridge.errors import StoreError
from bridge.log.blocks import Attestation
from bridge.settlement import Prepared, SettlementEngine

CLOCK_OFFSET_FILE = "CBDC_BRIDGE_CLOCK_OFFSET_FILE"
CRASH_FILE = "CBDC_BRIDGE_CRASH_FILE"
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
    """A settlement engine that kills its own process at the point the crash file names."""

    crash_file = Path()
    _armed: tuple[str, int] | None = None
    _commits = 0

    def _arm(self) -> None:
        try:
            phase, count = self.crash_file.read_text(encoding="ascii").split()
        except (OSError, ValueError):
            return
        if phase in CRASH_POINTS:
            self._armed, self._commits = (phase, max(1, int(count))), 0

    def commit(
        self, prepared: Prepared, attestations: Sequence[Attestation] = ()
    ) -> StoreError | None:
        if prepared.block is None:
            return super().commit(prepared, attestations)
        if self._armed is None and self.crash_file.exists():
            self._arm()
        phase = ""
        if self._armed is not None:
            self._commits += 1
            if self._commits == self._armed[1]:
                phase = self._armed[0]
                self.crash_file.unlink(missing_ok=True)  # a restart must not crash again
        if phase == "before-commit":
            _die()
        if phase == "during-commit":
            threading.Timer(0.0005, _die).start()
        failure = super().commit(prepared, attestations)
        if phase:
            _die()
        return failure


def engine_class() -> type[SettlementEngine]:
    """`CrashingEngine` watching the crash file, or `SettlementEngine` when none is named."""
    path = os.environ.get(CRASH_FILE, "")
    if not path:
        return SettlementEngine
    return type("WatchedEngine", (CrashingEngine,), {"crash_file": Path(path)})
