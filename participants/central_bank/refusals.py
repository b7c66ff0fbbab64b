"""Instructions a central bank node refused itself, kept in a small file of its own.

A node refuses some instructions before they reach the bridge: a bank that is not one of its
own, a signature that does not verify, a body of the wrong kind or shape, an endorsement a peer
node asks for that it may not give. Those never reach the bridge, so the bridge's `refusals`
table cannot hold them. The node records each one here, where it was decided: time (the node's
clock, Unix milliseconds), sender, instruction id, kind, reason and corridor, the same columns
as the bridge's table. A refusal the node only passes on (the bridge's, or a peer node's answer
to an endorsement request) is recorded by whoever decided it, so each refusal is recorded once
in the whole network. Answers that decide nothing (UNAVAILABLE, OVERLOADED, CATCHING_UP: the
bank resubmits the same instruction id) are not refusals and are not recorded.

Anyone can name a bank as the sender of an instruction, so a row says whether the sender was
authenticated: its own signature over the instruction verified (for an issuance request, the
signed `auth`). `CentralBank.GetRefusals` gives a bank only its authenticated rows; operators
see every row. The two kinds are kept apart, each with its own bound (the newest `keep`
authenticated rows, the newest `keep_unauthenticated` others), so unauthenticated traffic can
push out only unauthenticated rows, never what the banks really sent.

One SQLite file per node (`<network>/state/<CB>.refusals.sqlite`, WAL), outside any hash chain:
a refusal changed nothing, so nothing is signed or attested and no ledger state is touched. It
keeps the newest `REFUSALS_KEPT` authenticated rows and the newest `UNAUTHENTICATED_KEPT`
others, and in `meta` the central bank and the chain id, so `cbdc-bridge log export
--node-refusals` can say whose rows they are and refuse another network's file. `record` only
appends to memory (it never blocks the event loop); `flush` writes what waits in one
transaction in a worker thread, and runs every `FLUSH_SECONDS` and before every read, so a
read sees every refusal answered before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import MAX_ID_LENGTH
from bridge.core.ledger import Ledger
from bridge.domain import Envelope, Issue
from bridge.errors import Reason, Refused
from bridge.node.episodes import FailureEpisode
from bridge.settlement import RefusalRecord, refusal_record
from bridge.store.base import REFUSALS_KEPT

__all__ = [
    "EDGE_RECORDED_METHODS",
    "FLUSH_SECONDS",
    "UNAUTHENTICATED_KEPT",
    "NodeRefusals",
    "RecordedRefusal",
    "edge_refusal",
    "instruction_refusal",
    "issuance_refusal",
    "read_refusals",
    "refusals_file_meta",
]

FLUSH_SECONDS = 0.2
UNAUTHENTICATED_KEPT = 10_000  # newest rows kept whose sender was not authenticated

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, sender TEXT NOT NULL,
    instruction_id TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    corridor TEXT NOT NULL, authenticated INTEGER NOT NULL DEFAULT 0);
"""
# after SCHEMA, and after the column is added to a file written before it existed
_INDEX = "CREATE INDEX IF NOT EXISTS refusals_by_kind ON refusals (authenticated, id)"
_COLUMNS = "id, time, sender, instruction_id, kind, reason, corridor"

log = logging.getLogger("participants.central_bank.refusals")


@dataclass(frozen=True, slots=True)
class RecordedRefusal:
    """One row of the file: a refused instruction, numbered in the order it was recorded."""

    id: int
    time: int
    sender: str
    instruction_id: str
    kind: str
    reason: str
    corridor: str
    authenticated: bool = False  # the sender's own signature verified (see the module)


def instruction_refusal(
    message: types.SignedInstruction,
    envelope: Envelope | None,
    refusal: Refused,
    ledger: Ledger,
    now: int,
) -> RefusalRecord:
    """The row for a refused instruction: from its decoded envelope when it decoded (with the
    corridor, as the bridge writes it), else from the message's own fields (no corridor)."""
    if envelope is not None:
        return refusal_record(ledger, envelope, refusal, now)
    instruction = message.instruction
    kind = instruction.WhichOneof("body") or ""
    return (now, instruction.sender, instruction.instruction_id, kind, refusal.reason.value, "")


def issuance_refusal(
    request: Any, central_bank: str, refusal: Refused, ledger: Ledger, now: int
) -> RefusalRecord:
    """The row for a refused issuance request (`RequestIssuance`): the requesting bank as its
    sender, the request id as its instruction id, kind `issue`."""
    bank = ledger.participants.get(request.auth.requester)
    issuer = ledger.participants.get(central_bank)
    corridor = (
        "" if bank is None or issuer is None else f"{bank.jurisdiction}-{issuer.jurisdiction}"
    )
    reason = refusal.reason.value
    return (now, request.auth.requester, request.request_id, Issue.KIND, reason, corridor)


def refusals_file_meta(path: Path) -> dict[str, str]:
    """The `meta` rows of a node's refusals file (central_bank, chain_id); raises
    sqlite3.DatabaseError when it is not one."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")}
    finally:
        db.close()


# The CentralBank RPCs whose request is (or carries) a bank's instruction: refused at the edge
# for its shape (`bridge.node.request_guard`), it is recorded like any refusal of the node.
# Peers' EndorseDualPvp(s) are not: at the edge their caller is not authenticated yet.
EDGE_RECORDED_METHODS = frozenset(
    f"/bridge.v1.CentralBank/{name}"
    for name in (
        "Pay",
        "ProposePvp",
        "AcceptPvp",
        "RejectPvp",
        "CancelPvp",
        "SubmitDualPvp",
        "RequestRedemption",
        "SubmitStream",
        "RequestIssuance",
    )
)


def edge_refusal(method: str, message: Any, refusal: Refused, now: int) -> RefusalRecord | None:
    """The row for a bank's instruction refused at the edge for its shape (a field too long,
    not of its character set, a bad time); None for other methods. The sender and id are as
    sent, cut to 64 characters; no corridor (the fields are not to be trusted). A SubmitStream
    batch refused whole (too many instructions) gives none: no instruction in it was judged
    (one refused alone in its batch is recorded by the service, as a lone one)."""
    if method not in EDGE_RECORDED_METHODS or refusal.reason.retryable:
        return None
    if method.endswith("/SubmitStream") and len(message.instructions):
        return None
    if method.endswith("/RequestIssuance"):
        sender, instruction_id, kind = message.auth.requester, message.request_id, Issue.KIND
    else:
        # a SignedInstruction; on SubmitStream, a BankSubmitRequest around one
        signed = message.instruction if method.endswith("/SubmitStream") else message
        instruction = signed.instruction
        sender, instruction_id = instruction.sender, instruction.instruction_id
        kind = instruction.WhichOneof("body") or ""
    reason = refusal.reason.value
    return (now, _clipped(sender), _clipped(instruction_id), kind, reason, "")


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_ID_LENGTH else text[:MAX_ID_LENGTH] + "…"


def read_refusals(
    path: Path,
    *,
    from_id: int = 1,
    limit: int = -1,
    sender: str = "",
    authenticated_only: bool = False,
) -> list[RecordedRefusal]:
    """Rows of a node's refusals file from `from_id` on, oldest first (read-only; a file without
    the table reads as empty). `limit` -1: all of them; `sender`: only the rows naming that
    sender; `authenticated_only`: only rows whose sender was authenticated (a file written
    before rows said so has none)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if "refusals" not in tables:
            return []
        columns = {row[1] for row in db.execute("PRAGMA table_info(refusals)")}
        flag = "authenticated" if "authenticated" in columns else "0"
        where = ["id >= ?"]
        values: list[int | str] = [from_id]
        if sender:
            where.append("sender = ?")
            values.append(sender)
        if authenticated_only:
            where.append(f"{flag} = 1")
        cursor = db.execute(
            f"SELECT {_COLUMNS}, {flag} FROM refusals WHERE {' AND '.join(where)} "
            "ORDER BY id LIMIT ?",
            (*values, limit),
        )
        return [
            RecordedRefusal(number, time, who, iid, kind, reason, corridor, bool(flag))
            for number, time, who, iid, kind, reason, corridor, flag in cursor
        ]
    finally:
        db.close()


# a row waiting to be written: its number in recording order, whether its sender was
# authenticated, the row
_Waiting = tuple[int, bool, RefusalRecord]


class NodeRefusals:
    """The node's refusals file and the rows waiting to be written to it."""

    def __init__(
        self,
        path: Path,
        *,
        central_bank: str,
        chain_id: str,
        keep: int = REFUSALS_KEPT,
        keep_unauthenticated: int | None = None,
    ) -> None:
        self.path = path
        self.central_bank = central_bank
        self.chain_id = chain_id
        self.keep = keep  # authenticated rows
        self.keep_unauthenticated = (
            min(keep, UNAUTHENTICATED_KEPT)
            if keep_unauthenticated is None
            else keep_unauthenticated
        )
        # what a failing disk leaves waiting is bounded too, each kind apart: the oldest rows
        # of a kind are dropped; rows are numbered as recorded, to be written in that order
        self._pending: dict[bool, deque[_Waiting]] = {
            True: deque(maxlen=self.keep),
            False: deque(maxlen=self.keep_unauthenticated),
        }
        self._numbers = itertools.count()
        self._lock = asyncio.Lock()
        self._db: sqlite3.Connection | None = None
        self._reads = FailureEpisode(log, "refusals file reads")  # logged once per episode

    def record(self, row: RefusalRecord, *, authenticated: bool = False) -> None:
        """Keep one refused instruction (written by the next `flush`); `authenticated`: its
        sender's own signature verified."""
        self._pending[authenticated].append((next(self._numbers), authenticated, row))

    async def flush(self) -> None:
        """Write every waiting row, in one transaction, off the event loop."""
        async with self._lock:
            pending = self._pending
            if not pending[True] and not pending[False]:
                return
            rows = list(heapq.merge(pending[True], pending[False]))  # in recording order
            for waiting in pending.values():
                waiting.clear()
            try:
                await asyncio.to_thread(self._write, rows)
            except (sqlite3.Error, OSError) as error:
                # not written: back in front for the next flush (still only the newest of each)
                for flag, waiting in pending.items():
                    pending[flag] = deque(
                        [*(r for r in rows if r[1] is flag), *waiting], maxlen=waiting.maxlen
                    )
                log.warning(
                    "refusals not recorded yet", extra={"rows": len(rows), "error": str(error)}
                )

    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        """Flush every `interval` seconds until cancelled (a write under way when cancelled
        still ends, holding the lock, so a last `flush` on stop waits for it)."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.shield(self.flush())

    async def page(
        self, from_id: int, limit: int, sender: str = "", *, authenticated_only: bool = False
    ) -> list[RecordedRefusal]:
        """Up to `limit` rows from `from_id` on (only `sender`'s when given; only those whose
        sender was authenticated when asked), after a flush (shielded: a caller that goes away
        leaves the write to end under the lock, never a second write started beside it)."""
        await asyncio.shield(self.flush())
        if not self.path.exists():
            return []
        try:
            rows = await asyncio.to_thread(
                read_refusals,
                self.path,
                from_id=from_id,
                limit=limit,
                sender=sender,
                authenticated_only=authenticated_only,
            )
        except (sqlite3.Error, OSError) as error:
            # not decided: the file may be readable again on the next read (a disk error, a
            # file being replaced); nothing was changed by trying
            self._reads.failed(error)
            raise Refused(
                Reason.UNAVAILABLE,
                f"the node's refusals file cannot be read now ({error}); ask again",
            ) from error
        self._reads.succeeded()
        return rows

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout=10000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(refusals)")}
                if "authenticated" not in columns:  # a file of an earlier version: not known
                    db.execute(
                        "ALTER TABLE refusals ADD COLUMN authenticated INTEGER NOT NULL DEFAULT 0"
                    )
                db.execute(_INDEX)
                meta = {"central_bank": self.central_bank, "chain_id": self.chain_id}
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def _write(self, rows: Sequence[_Waiting]) -> None:
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO refusals (time, sender, instruction_id, kind, reason, corridor, "
                "authenticated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, int(authenticated)) for _, authenticated, row in rows],
            )
            for flag, keep in ((1, self.keep), (0, self.keep_unauthenticated)):
                # everything of this kind older than its newest `keep` rows
                db.execute(
                    "DELETE FROM refusals WHERE authenticated = ? AND id <= (SELECT id FROM "
                    "refusals WHERE authenticated = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (flag, flag, keep),
                )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            raise
