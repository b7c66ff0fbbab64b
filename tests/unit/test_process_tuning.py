"""A node process's garbage collector: rarer collections, start-up objects frozen."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from bridge.process_tuning import GC_THRESHOLDS, tune_garbage_collector


def test_tuning_makes_young_collections_rarer_and_freezes_what_exists() -> None:
    """After tuning, the young generation is collected far less often than by default and the
    objects that existed are out of the collector's reach."""
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] >= 50 * 700
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_node_process_runs_with_the_tuned_collector() -> None:
    """`run_until_signalled`, which every node command runs in, tunes the collector before the
    node's main starts (a real interpreter, so the test's own process is not changed)."""
    probe = (
        "import asyncio, gc, json\n"
        "from participants.node_cli import run_until_signalled\n"
        "async def main(stop: asyncio.Event) -> None:\n"
        "    print(json.dumps([list(gc.get_threshold()), gc.get_freeze_count()]))\n"
        "run_until_signalled(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    thresholds, frozen = json.loads(done.stdout)
    assert tuple(thresholds) == GC_THRESHOLDS
    assert frozen > 0
