"""A central bank node's refusals file: rows as recorded, newest kept, nothing else touched."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.core.ledger import Ledger, SignatureCheck
from bridge.crypto import PrivateKey
from bridge.domain import Envelope, Genesis, GenesisBank, Pay
from bridge.errors import Reason, Refused
from bridge.log.tables import NODE_REFUSALS_TABLES
from bridge.settlement import RefusalRecord
from bridge.store.base import REFUSALS_KEPT
from participants.central_bank.refusals import (
    NodeRefusals,
    RecordedRefusal,
    edge_refusal,
    instruction_refusal,
    read_refusals,
    refusals_file_meta,
)

OWNER = {"central_bank": "PBOC", "chain_id": "test-chain"}


def refusals_at(path: Path, keep: int = REFUSALS_KEPT) -> NodeRefusals:
    return NodeRefusals(path, central_bank="PBOC", chain_id="test-chain", keep=keep)


def row(number: int) -> tuple[int, str, str, str, str, str]:
    return (1_000 + number, "ICBC", f"pay-{number}", "pay", "BAD_SIGNATURE", "CN-HK")


def test_flush_writes_each_recorded_refusal_once_in_order(tmp_path: Path) -> None:
    """Rows recorded before a flush are written once each, numbered in recording order."""
    refusals = refusals_at(tmp_path / "PBOC.refusals.sqlite")

    async def run() -> list[RecordedRefusal]:
        for number in range(3):
            refusals.record(row(number))
        await refusals.flush()
        await refusals.flush()  # nothing waits: writes nothing more
        return await refusals.page(1, 10)

    rows = asyncio.run(run())
    refusals.close()
    assert [(r.id, r.instruction_id) for r in rows] == [(1, "pay-0"), (2, "pay-1"), (3, "pay-2")]
    assert rows[0] == RecordedRefusal(1, 1_000, "ICBC", "pay-0", "pay", "BAD_SIGNATURE", "CN-HK")


def test_the_file_keeps_only_the_newest_refusals(tmp_path: Path) -> None:
    """Past `keep` rows the oldest are dropped, across flushes; numbers keep increasing."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = refusals_at(path, keep=5)

    async def run() -> None:
        for first in (0, 4, 8):
            for number in range(first, first + 4):
                refusals.record(row(number))
            await refusals.flush()

    asyncio.run(run())
    refusals.close()
    rows = read_refusals(path)
    assert [r.id for r in rows] == [8, 9, 10, 11, 12]
    assert [r.instruction_id for r in rows] == [f"pay-{n}" for n in range(7, 12)]


def test_rows_waiting_for_a_flush_are_bounded_too(tmp_path: Path) -> None:
    """More refusals than `keep` before a flush: only the newest `keep` are written."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = refusals_at(path, keep=3)
    for number in range(10):
        refusals.record(row(number))
    asyncio.run(refusals.flush())
    refusals.close()
    assert [r.instruction_id for r in read_refusals(path)] == ["pay-7", "pay-8", "pay-9"]


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path: Path) -> None:
    """A flush that cannot write loses nothing: the next one that can writes every row once."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the node's state directory should be")
    path = blocked / "PBOC.refusals.sqlite"
    refusals = refusals_at(path)
    refusals.record(row(1))
    asyncio.run(refusals.flush())
    assert not path.exists()
    blocked.unlink()
    refusals.record(row(2))
    asyncio.run(refusals.flush())
    refusals.close()
    assert [r.instruction_id for r in read_refusals(path)] == ["pay-1", "pay-2"]


def test_reads_filter_by_sender_and_page_from_an_id(tmp_path: Path) -> None:
    """A read from an id, for one sender, returns that sender's rows from there on."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = refusals_at(path)
    for number in range(6):
        sender = "ICBC" if number % 2 else "BOCQ"
        refusals.record((number, sender, f"i-{number}", "pay", "MALFORMED", ""))
    asyncio.run(refusals.flush())
    refusals.close()
    assert [r.instruction_id for r in read_refusals(path, from_id=3, sender="ICBC")] == [
        "i-3",
        "i-5",
    ]
    assert [r.id for r in read_refusals(path, from_id=2, limit=2)] == [2, 3]


def test_the_file_is_what_the_data_dictionary_documents(tmp_path: Path) -> None:
    """The node's file has exactly the tables, columns and types of the data dictionary's
    node file section, and `meta` names the central bank and the chain."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = refusals_at(path)
    refusals.record(row(1))
    asyncio.run(refusals.flush())
    refusals.close()
    with sqlite3.connect(path) as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        schema = {
            name: [(c[1], c[2]) for c in db.execute(f"PRAGMA table_info({name})")] for name in names
        }
    db.close()
    assert schema == {t.name: [(c.name, c.type) for c in t.columns] for t in NODE_REFUSALS_TABLES}
    assert refusals_file_meta(path) == {"central_bank": "PBOC", "chain_id": "test-chain"}


def test_a_row_names_the_corridor_when_both_parties_are_known() -> None:
    """The row of a decoded payment carries sender-payee jurisdictions; an undecoded one none."""
    keys = {cb: PrivateKey.generate() for cb in ("PBOC", "HKMA")}
    genesis = Genesis(
        "test-chain",
        (
            GenesisBank("PBOC", "CN", keys["PBOC"].public_key, "CNY", 2),
            GenesisBank("HKMA", "HK", keys["HKMA"].public_key, "HKD", 2),
        ),
        2,
    )
    ledger = Ledger(genesis, check=SignatureCheck.NONE)
    body = Pay("pay-1", "PBOC", 10, "HKMA", "CNY", 5, "")
    refusal = Refused(Reason.BAD_SIGNATURE, "signature by PBOC does not verify")
    message = types.SignedInstruction()
    decoded = instruction_refusal(message, Envelope.of(body), refusal, ledger, 7)
    assert decoded == (7, "PBOC", "pay-1", "pay", "BAD_SIGNATURE", "CN-HK")
    message.instruction.sender = "ICBC"
    message.instruction.instruction_id = "pay-2"
    message.instruction.pay.currency = "CNY"
    undecoded = instruction_refusal(message, None, refusal, ledger, 8)
    assert undecoded == (8, "ICBC", "pay-2", "pay", "BAD_SIGNATURE", "")


def test_edge_refusals_are_rows_only_for_bank_instructions() -> None:
    """A bank's instruction refused at the edge gives a row (sender and id cut to 64
    characters), on SubmitStream and RequestIssuance too; a query or a peer's call gives none."""
    refusal = Refused(Reason.FIELD_TOO_LONG, "instruction_id is too long")
    signed = types.SignedInstruction()
    signed.instruction.sender = "ICBC"
    signed.instruction.instruction_id = "i" * 100
    signed.instruction.pay.currency = "CNY"
    clipped = "i" * 64 + "…"
    row = edge_refusal("/bridge.v1.CentralBank/Pay", signed, refusal, 5)
    assert row == (5, "ICBC", clipped, "pay", "FIELD_TOO_LONG", "")
    streamed = cb_pb.BankSubmitRequest(correlation_id=3, instruction=signed)
    assert edge_refusal("/bridge.v1.CentralBank/SubmitStream", streamed, refusal, 6) == (
        6,
        "ICBC",
        clipped,
        "pay",
        "FIELD_TOO_LONG",
        "",
    )
    issuance = cb_pb.IssuanceRequest(request_id="r" * 70)
    issuance.auth.requester = "BOCQ"
    row = edge_refusal("/bridge.v1.CentralBank/RequestIssuance", issuance, refusal, 7)
    assert row == (7, "BOCQ", "r" * 64 + "…", "issue", "FIELD_TOO_LONG", "")
    assert edge_refusal("/bridge.v1.CentralBank/EndorseDualPvp", signed, refusal, 8) is None


def test_a_batch_refused_whole_at_the_edge_gives_no_row() -> None:
    """A SubmitStream batch refused whole (too many instructions) records no instruction."""
    refusal = Refused(Reason.FIELD_TOO_LONG, "instructions: at most 1024 elements, got 1,025")
    signed = types.SignedInstruction()
    signed.instruction.sender = "ICBC"
    signed.instruction.instruction_id = "i-1"
    batch = cb_pb.BankSubmitRequest(correlation_id=4, instructions=[signed] * 1025)
    assert edge_refusal("/bridge.v1.CentralBank/SubmitStream", batch, refusal, 9) is None
    assert (
        edge_refusal("/bridge.v1.CentralBank/GetHistory", cb_pb.HistoryQuery(), refusal, 9) is None
    )


def test_a_reader_that_goes_away_mid_write_loses_no_row(tmp_path: Path) -> None:
    """A GetRefusals whose caller is cancelled while its flush writes leaves that write to end
    under the lock: the next flush waits for it, and every row is written once."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = refusals_at(path)
    gate = threading.Event()
    started = threading.Event()
    real = refusals._write

    def slow(rows: Sequence[RefusalRecord]) -> None:
        started.set()
        gate.wait(10)
        real(rows)

    refusals._write = slow  # type: ignore[method-assign]

    async def run() -> None:
        refusals.record(row(1))
        reader = asyncio.create_task(refusals.page(1, 10))
        await asyncio.to_thread(started.wait, 10)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        refusals.record(row(2))
        second = asyncio.create_task(refusals.flush())
        await asyncio.sleep(0.05)
        gate.set()
        await second
        await refusals.flush()

    asyncio.run(run())
    refusals.close()
    assert [r.instruction_id for r in read_refusals(path)] == ["pay-1", "pay-2"]


def test_unauthenticated_rows_push_out_only_unauthenticated_rows(tmp_path: Path) -> None:
    """A flood of rows whose sender was not authenticated, waiting or written, drops only the
    oldest of its own kind: every authenticated row stays, and a bank's authenticated read
    gives those alone."""
    path = tmp_path / "PBOC.refusals.sqlite"
    refusals = NodeRefusals(
        path, central_bank="PBOC", chain_id="test-chain", keep=5, keep_unauthenticated=3
    )

    async def run() -> None:
        refusals.record(row(0), authenticated=True)
        for number in range(1, 30):  # waiting together before one flush
            refusals.record(row(number))
        refusals.record(row(30), authenticated=True)
        await refusals.flush()
        for number in range(31, 60):  # then written flush after flush
            refusals.record(row(number))
            if number % 7 == 0:
                await refusals.flush()
        refusals.record(row(60), authenticated=True)
        await refusals.flush()

    asyncio.run(run())
    refusals.close()
    rows = read_refusals(path)
    assert [r.instruction_id for r in rows if r.authenticated] == ["pay-0", "pay-30", "pay-60"]
    assert [r.instruction_id for r in rows if not r.authenticated] == [
        f"pay-{n}" for n in (57, 58, 59)
    ]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    own = read_refusals(path, sender="ICBC", authenticated_only=True)
    assert [r.instruction_id for r in own] == ["pay-0", "pay-30", "pay-60"]


def test_a_file_from_before_the_flag_reads_as_unauthenticated(tmp_path: Path) -> None:
    """Rows of a file written before rows said whether their sender was authenticated read
    as unauthenticated (never given to a bank); rows recorded after carry their flag."""
    path = tmp_path / "PBOC.refusals.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE refusals (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, "
            "sender TEXT NOT NULL, instruction_id TEXT NOT NULL, kind TEXT NOT NULL, "
            "reason TEXT NOT NULL, corridor TEXT NOT NULL);"
        )
        db.execute("INSERT INTO refusals VALUES (1, 5, 'ICBC', 'old', 'pay', 'MALFORMED', '')")
    db.close()
    assert [(r.instruction_id, r.authenticated) for r in read_refusals(path)] == [("old", False)]
    assert read_refusals(path, authenticated_only=True) == []
    refusals = refusals_at(path)
    refusals.record(row(1), authenticated=True)
    asyncio.run(refusals.flush())
    refusals.close()
    assert [(r.instruction_id, r.authenticated) for r in read_refusals(path)] == [
        ("old", False),
        ("pay-1", True),
    ]
