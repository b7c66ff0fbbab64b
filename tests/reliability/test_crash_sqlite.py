"""SIGKILL a settling process at random moments: what it acknowledged is on disk, once.

Each round starts `tests.reliability._crash_child` on the same directory (same key files, same
SQLite file), lets it settle signed batches for a random 0.2-1.5 s and kills it with SIGKILL.
After every kill the store is reopened and checked: every acknowledged instruction is in the
entries table exactly once at the sequence number it was acknowledged with, re-sent ids came
back as duplicates, the whole hash chain verifies, conservation holds, and replaying every
stored entry from genesis with all signatures checked reproduces the stored state.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from bridge.core.ledger import Ledger, SignatureCheck, replay
from bridge.crypto import FastVerifier
from bridge.domain import Entry, Genesis, Outcome
from bridge.store.sqlite import SqliteStore
from tests.reliability._crash_child import STORE_FILE
from tests.reliability._network import ensure_keys, load_network

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
KILL_AFTER = (0.2, 1.5)  # seconds after the child reported ready
READY_TIMEOUT = 20.0
RESUBMITTED_PER_ROUND = 6
ReceiptKey = tuple[str, str]


@dataclass
class ChildOutput:
    """Complete lines a child printed, collected by a reader thread."""

    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def collect(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.endswith("\n"):
                break  # cut off by the kill mid-write: never a promise
            self.lines.append(line.rstrip("\n"))
            if line == "ready\n":
                self.ready.set()


@dataclass
class Acknowledged:
    """Everything the children promised so far, by (sender, instruction id)."""

    seqs: dict[ReceiptKey, int] = field(default_factory=dict)

    def record(self, lines: list[str], round_number: int) -> int:
        """Fold in one round's lines; return how many results the round reported.

        A re-sent id reported as anything but `dup` (the child says `fresh`), an id reported
        at another seq than before, or a refusal fails here."""
        reported = 0
        for line in lines:
            tag, *rest = line.split(" ", 3)
            if tag == "ready":
                continue
            assert tag in ("ack", "dup"), f"round {round_number}: unexpected line {line!r}"
            sender, instruction_id, seq_text = rest
            key, seq = (sender, instruction_id), int(seq_text)
            known = self.seqs.setdefault(key, seq)
            assert known == seq, f"{key} acknowledged at seq {known}, later reported at {seq}"
            reported += 1
        return reported


@pytest.fixture
def run_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bridge-crash-") as tmp:
        yield Path(tmp)


def run_round(directory: Path, round_number: int, resubmit: list[str], delay: float) -> list[str]:
    """Start a child, let it settle for `delay` seconds after it is ready, SIGKILL it."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability._crash_child",
            str(directory),
            str(round_number),
            *resubmit,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = ChildOutput()
    assert child.stdout is not None
    reader = threading.Thread(target=output.collect, args=(child.stdout,), daemon=True)
    reader.start()
    try:
        assert output.ready.wait(READY_TIMEOUT), "child never became ready"
        time.sleep(delay)
        still_running = child.poll() is None
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
    assert child.stderr is not None
    errors = child.stderr.read()
    child.stderr.close()
    child.stdout.close()
    assert still_running, f"child exited before the kill: {errors}"
    assert child.returncode == -signal.SIGKILL
    return output.lines


def stored_entries(path: Path) -> list[tuple[int, str, str, bytes]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq, sender, instruction_id, data FROM entries ORDER BY seq")
        return [(seq, sender, iid, bytes(data)) for seq, sender, iid, data in rows]


def state_of(ledger: Ledger) -> dict[str, dict[Any, Any]]:
    return {name: dict(rows) for name, rows in ledger.tables().items()}


def check_store(path: Path, genesis: Genesis, acknowledged: Acknowledged) -> int:
    """Everything promised is stored once, the chain and conservation hold, replay agrees."""
    store = SqliteStore(path)
    try:
        store.verify_tail(genesis, blocks=1_000_000_000)
        loaded = store.load(verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS)
        return check_loaded(path, store, genesis, loaded, acknowledged)
    finally:
        store.close()


def check_loaded(
    path: Path, store: SqliteStore, genesis: Genesis, loaded: Ledger, acknowledged: Acknowledged
) -> int:
    assert loaded.conservation_errors() == []

    rows = stored_entries(path)
    assert [seq for seq, *_ in rows] == list(range(1, len(rows) + 1))
    counts = Counter((sender, iid) for _, sender, iid, _ in rows)
    seq_of = {(sender, iid): seq for seq, sender, iid, _ in rows}
    for key, seq in acknowledged.seqs.items():
        assert counts[key] == 1, f"acknowledged {key} stored {counts[key]} times"
        assert seq_of[key] == seq, f"{key} acknowledged at seq {seq}, stored at {seq_of[key]}"

    entries = (Entry.from_canonical_bytes(data) for *_, data in rows)
    replayed = replay(genesis, entries, verifier=FastVerifier(), check=SignatureCheck.ALL)
    assert replayed.conservation_errors() == []
    assert replayed.balances == loaded.balances
    # the loaded ledger holds only held PvPs (closed ones are read back from the store) and
    # no receipts (looked up in the entries table)
    mine, theirs = state_of(loaded), state_of(replayed)
    pvps = theirs.pop("pvps")
    assert mine.pop("pvps") == {k: v for k, v in pvps.items() if v.status is Outcome.HELD}
    assert all(store.pvp(*key) == state for key, state in pvps.items())
    assert mine == theirs
    receipts = dict(replayed.receipts.items())
    assert {(r.sender, r.instruction_id): r for r in store.receipts_for(list(receipts))} == receipts
    assert replayed.next_seq == loaded.next_seq == len(rows) + 1
    return len(rows)


def test_acknowledged_settlements_survive_sigkill(run_directory: Path) -> None:
    """Killed at random moments, a settling process never loses or repeats what it acked."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    ensure_keys(run_directory)
    genesis = load_network(run_directory).genesis
    acknowledged = Acknowledged()
    started = time.monotonic()
    stored = 0
    for round_number in range(1, ROUNDS + 1):
        known = sorted(iid for _, iid in acknowledged.seqs)
        resubmit = rng.sample(known, min(RESUBMITTED_PER_ROUND, len(known)))
        delay = rng.uniform(*KILL_AFTER)
        lines = run_round(run_directory, round_number, resubmit, delay)
        context = f"seed {seed}, round {round_number}, killed after {delay:.2f}s"
        reported = acknowledged.record(lines, round_number)
        assert reported > 0, f"{context}: nothing settled before the kill"
        total = check_store(run_directory / STORE_FILE, genesis, acknowledged)
        assert total >= stored, context
        stored = total
    assert time.monotonic() - started < 60
    assert len(acknowledged.seqs) > 100, "too little settled to mean anything"
