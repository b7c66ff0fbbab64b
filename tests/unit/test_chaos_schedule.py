"""The chaos campaign's plan and fault tools: seeded schedules, the fault proxy, the clock hook."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge.node import fault_hooks
from bridge.store.sqlite import SqliteStore
from participants.chaos.faults import FaultProxy
from participants.chaos.schedule import FULL, QUICK, plan, schedule_digest
from participants.launcher import free_ports

CBS = ["PBOC", "HKMA", "BOT", "CBUAE"]


def test_same_seed_gives_the_same_schedule() -> None:
    """Two plans from one seed are equal; another seed gives another schedule."""
    assert plan(7, QUICK, CBS) == plan(7, QUICK, CBS)
    assert schedule_digest(plan(7, QUICK, CBS)) == schedule_digest(plan(7, QUICK, CBS))
    assert schedule_digest(plan(8, QUICK, CBS)) != schedule_digest(plan(7, QUICK, CBS))


def test_full_profile_kills_at_least_twenty_times_in_every_block_phase() -> None:
    """The full campaign plans 20+ kills, the bridge's in every phase of a block commit."""
    scenarios = plan(1, FULL, CBS)
    kills = [f for s in scenarios if not s.needs for f in s.faults if f.kind == "kill"]
    assert len(kills) >= 20
    phases = {f.phase for f in kills if f.target == "bridge"}
    assert phases == {"random", "before-commit", "during-commit", "after-commit"}


def test_outage_outlasts_a_pvp_deadline() -> None:
    """A planned central bank outage is longer than twice the PvP settlement window."""
    outages = [f for s in plan(3, QUICK, CBS) for f in s.faults if s.name.endswith("outage")]
    assert outages
    assert all(f.hold > 2 * QUICK.settle_within_s for f in outages)


def test_full_profile_puts_every_network_fault_on_both_links() -> None:
    """Delay, loss, reset and partition each hit the central bank-bridge link and the
    bank-central bank link in the full campaign."""
    faults = [f for s in plan(5, FULL, CBS) for f in s.faults if f.kind == "net"]
    seen = {(f.target, f.mode) for f in faults}
    for link in ("bridge-link", "bank-link"):
        for mode in ("delay", "loss", "reset", "blackhole"):
            assert (link, mode) in seen, (link, mode)
    assert all(0 < f.loss < 1 for f in faults if f.mode == "loss")


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def test_fault_proxy_passes_delays_resets_and_blackholes() -> None:
    """Through the proxy bytes arrive; delayed later; reset connections break; a black hole
    answers nothing."""
    server, port = _echo_server()
    proxy = FaultProxy("test", ("127.0.0.1", port), free_ports(1)[0]).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
            conn.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        proxy.set("delay", 0.3)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
            began = time.monotonic()
            conn.sendall(b"slow")
            assert conn.recv(4) == b"slow"
            assert time.monotonic() - began >= 0.5  # held each way
        proxy.set("reset")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
            try:
                conn.sendall(b"x")
                answer = conn.recv(4)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed at once
        proxy.set("blackhole")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as conn:
            conn.sendall(b"lost")
            with pytest.raises(TimeoutError):
                conn.recv(4)
    finally:
        proxy.close()
        server.close()


def test_fault_proxy_loss_holds_chunks_for_retransmission_timeouts() -> None:
    """With every try lost, each chunk waits out TCP's retransmission timeouts (0.2 + 0.4 +
    0.8 s) each way and then arrives whole."""
    server, port = _echo_server()
    proxy = FaultProxy("test", ("127.0.0.1", port), free_ports(1)[0]).start()
    try:
        proxy.set("loss", loss=1.0)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
            began = time.monotonic()
            conn.sendall(b"lossy")
            answer = b""
            while len(answer) < 5:
                answer += conn.recv(5 - len(answer))
            assert answer == b"lossy"
            assert time.monotonic() - began >= 2 * 1.4
        with pytest.raises(ValueError, match="probability"):
            proxy.set("loss", loss=1.5)
    finally:
        proxy.close()
        server.close()


def test_clock_offset_file_shifts_the_bridge_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test hook adds the offset written in its file; without the variable it is a no-op."""
    offset = tmp_path / "offset"
    offset.write_text("60000\n")
    monkeypatch.setenv(fault_hooks.CLOCK_OFFSET_FILE, str(offset))
    assert fault_hooks.offset_clock(lambda: 1_000)() == 61_000
    monkeypatch.delenv(fault_hooks.CLOCK_OFFSET_FILE)
    source = fault_hooks.offset_clock(lambda: 1_000)
    assert source() == 1_000


CRASH_CHILD = """
import sys
from pathlib import Path
from bridge.crypto import FastVerifier
from bridge.node import fault_hooks
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite import SqliteStore
from tests.factories import BANKS, T0, admit_bank
from tests.reliability._network import ensure_keys, load_network

directory = Path(sys.argv[1])
ensure_keys(directory)
net = load_network(directory)
store = SqliteStore(directory / "ledger.sqlite")
engine = fault_hooks.engine_class().open(store, net.genesis, verifier=FastVerifier())
for number, (bank, cb) in enumerate(BANKS, start=1):
    engine.settle([admit_bank(net, cb, bank, instruction_id=f"admit-{bank}")], T0 + number)
    print("settled", number, flush=True)
"""


@pytest.mark.parametrize(
    ("phase", "durable"),
    [("before-commit", {1}), ("during-commit", {1, 2}), ("after-commit", {2})],
)
def test_crash_file_kills_the_bridge_at_its_block_phase(
    tmp_path: Path, phase: str, durable: set[int]
) -> None:
    """Armed with `PHASE 2`, the engine SIGKILLs its process at that point of its 2nd block
    commit (before it: one block on disk; after it: two; during it: the transaction is whole
    or absent) and disarms the file."""
    crash_file = tmp_path / "crash"
    crash_file.write_text(f"{phase} 2\n")
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)],
        env={**os.environ, fault_hooks.CRASH_FILE: str(crash_file)},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["settled", "1"]
    assert not crash_file.exists()
    store = SqliteStore(tmp_path / "ledger.sqlite")
    head = store.head()
    store.close()
    assert head is not None
    assert head.height in durable
