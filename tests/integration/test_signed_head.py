"""Signed heads from real central bank nodes: a log cut short no longer verifies.

`cbdc-bridge log head` runs as a subprocess from a temporary directory against a running
network; the bridge's SQLite store is copied (read-only backup) at two moments, so the earlier
copy is exactly a log cut short.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc

from bridge.errors import Reason
from bridge.log.head import SignedHead
from bridge.log.source import SqliteSource
from bridge.log.verify import verify_log
from tests.conftest import RPC_TIMEOUT, LiveNetwork, reason_of, refusal_of, wait_for


def copy_store(live: LiveNetwork, target: Path) -> Path:
    """A consistent copy of the bridge's store, taken through SQLite's backup API."""
    source = sqlite3.connect(f"file:{live.config.bridge_db}?mode=ro", uri=True, timeout=10.0)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    return target


def log_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "participants.cli", "log", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_log_head_then_verify_head_catches_a_cut_log(live: LiveNetwork, tmp_path: Path) -> None:
    """A copy of the log taken before the signed head verifies alone but fails with --head."""
    live.issue("ICBC", 10_000)
    live.issue("BOCHK", 10_000)
    live.pay("ICBC", "HSBCHK", 1_000, reference="INV-HEAD-1")
    live.wait_all_final()
    early = copy_store(live, tmp_path / "early.sqlite")
    live.pay("BOCHK", "ICBC", 2_000, reference="INV-HEAD-2")
    height = live.wait_all_final()
    head_file = tmp_path / "head.json"

    def fetched() -> int:
        args = ("head", "--network", str(live.directory), "--bank", "BOCHK", "-o", str(head_file))
        completed = log_cli(*args, cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr
        return int(json.loads(head_file.read_text())["block"]["height"] >= height)

    wait_for(fetched, timeout=30.0, what="HKMA's signed head to reach the final height")
    head = SignedHead.from_json(json.loads(head_file.read_text()))
    assert head.central_bank == "HKMA"
    full = copy_store(live, tmp_path / "full.sqlite")

    alone = log_cli("verify", str(early), "--no-progress", cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout
    cut = log_cli("verify", str(early), "--head", str(head_file), "--no-progress", cwd=tmp_path)
    assert cut.returncode == 1, cut.stdout
    assert "cut short" in cut.stdout
    whole = log_cli("verify", str(full), "--head", str(head_file), "--no-progress", cwd=tmp_path)
    assert whole.returncode == 0, whole.stdout


def test_a_live_bridge_store_verifies_with_every_state_table(
    live: LiveNetwork, tmp_path: Path
) -> None:
    """The state tables a running bridge wrote equal the replay of its log, row by row."""
    live.issue("KBANK", 10_000)
    live.pay("KBANK", "ICBC", 3_000, reference="INV-STATE-1")
    live.wait_all_final()
    with SqliteSource(copy_store(live, tmp_path / "store.sqlite")) as source:
        report = verify_log(source)
    assert report.ok, report.failures


def test_get_signed_head_requires_a_signed_query(live: LiveNetwork) -> None:
    """An anonymous GetSignedHead, sent as raw bytes, is refused as unauthenticated."""
    channel = live.channel(live.address("PBOC"))
    call = channel.unary_unary(
        "/bridge.v1.CentralBank/GetSignedHead",
        request_serializer=None,
        response_deserializer=None,
    )
    error = refusal_of(lambda: call(b"", timeout=RPC_TIMEOUT))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) is Reason.MISSING_SIGNATURE
