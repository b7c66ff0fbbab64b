"""The PostgreSQL store: the same ledger, log and outbox as SQLite, in a database server.

Every operation takes a connection from a `psycopg_pool.ConnectionPool` (checked on checkout,
so a server restart costs one failed call, not a dead pool). A block, its entries, the state
rows it changed, its outbox events and any attestations commit in one transaction, as in SQLite.

The database is the second line of defence behind the ledger core: balances cannot go negative
(CHECK constraints), a block must link to the block before it (a foreign key on
(height - 1, prev_hash)), so the log can neither fork (primary key on height) nor skip a height,
and every entry belongs to a stored block.

Several bridge processes may share one database; only the leader writes blocks. Leadership is a
session advisory lock (`Leadership`); taking it increments the `leader.epoch` row, and every
block commit first checks, in its own transaction, that the epoch is still the one this store
was given (`fence`). A deposed leader's commit therefore fails whole, even if it has not yet
noticed it lost the lock. The lock is a lease (`LEASE_SECONDS`): the server ends a lock session
that falls silent, and a commit transaction left idle, so a paused leader holds nobody up.

The schema comes from numbered migrations (`MIGRATIONS`), applied in order under an advisory
lock and recorded in `schema_migrations`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from bridge.core.ledger import Batch, Ledger, ReceiptKey, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Genesis, Outcome, Receipt
from bridge.errors import LogIntegrityError, StoreError
from bridge.log.blocks import Attestation, BlockHeader, SealedBlock
from bridge.store.base import REFUSALS_KEPT
from bridge.store.codec import (
    COVERING_QUERY,
    KV_TABLES,
    LOADED_ROWS_QUERY,
    POSTGRES_PVP_STATUS,
    decode_row,
    encode_key,
    encode_value,
    entry_row_values,
)
from bridge.store.receipts import stored_ledger
from bridge.store.state_reads import StateReads
from bridge.store.tail import TAIL_BLOCKS_VERIFIED, check_tail

log = logging.getLogger("bridge.store")
MIGRATION_LOCK = 0x6362_6463_6D69_6772  # advisory lock keys: "cbdcmigr"
LEADER_LOCK = 0x6362_6463_6C65_6164  # "cbdclead"
POOL_WAIT_SECONDS = 3.0  # callers wait this long for a connection while the server is away
CONNECT_OPTIONS: dict[str, str | int] = {
    "connect_timeout": 3,
    # a dead peer is noticed within seconds, not the kernel's two hours
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "application_name": "cbdc-bridge",
}

# the lock's session is idle between checks: the server notices a vanished leader machine
# (no FIN, e.g. power loss or a partition) only through its own keepalives, about 5 s here,
# instead of the operating system's default of two hours; then the lock is free
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=5000"
)
# Leadership is a lease: a leader proves it is alive on its lock session every few tenths of a
# second (`Leadership.held`). A session silent for LEASE_SECONDS (the process paused, its
# machine gone while the kernel of a proxy or NAT still answers keepalives) is closed by the
# server, which frees the lock; a block commit left open that long (the same pause, mid-way)
# is ended too, which frees the fencing row the next leader's epoch increment waits for.
LEASE_SECONDS = 5
LEASE_TIMEOUT = f"{LEASE_SECONDS * 1000}ms"

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE blocks (
    height bigint PRIMARY KEY CHECK (height > 0),
    hash bytea NOT NULL, prev_hash bytea NOT NULL, merkle_root bytea NOT NULL,
    time bigint NOT NULL, first_seq bigint NOT NULL CHECK (first_seq > 0),
    entry_count integer NOT NULL CHECK (entry_count > 0),
    prev_height bigint GENERATED ALWAYS AS (CASE WHEN height > 1 THEN height - 1 END) STORED,
    UNIQUE (height, hash),
    FOREIGN KEY (prev_height, prev_hash) REFERENCES blocks (height, hash));
CREATE TABLE entries (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    height bigint NOT NULL REFERENCES blocks (height),
    sender text NOT NULL, instruction_id text NOT NULL, kind text NOT NULL,
    outcome text NOT NULL, time bigint NOT NULL, body_hash bytea NOT NULL, data bytea NOT NULL,
    UNIQUE (sender, instruction_id));
CREATE TABLE attestations (
    height bigint NOT NULL, central_bank text NOT NULL, block_hash bytea NOT NULL,
    signature bytea NOT NULL, PRIMARY KEY (height, central_bank));
CREATE TABLE accounts (
    participant text NOT NULL, currency text NOT NULL,
    available bigint NOT NULL CONSTRAINT available_not_negative CHECK (available >= 0),
    held bigint NOT NULL CONSTRAINT held_not_negative CHECK (held >= 0),
    PRIMARY KEY (participant, currency));
CREATE TABLE state (
    tbl text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (tbl, key));
CREATE TABLE outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    height bigint NOT NULL, payload bytea NOT NULL);
CREATE TABLE outbox_cursor (consumer text PRIMARY KEY, last_id bigint NOT NULL);
CREATE TABLE leader (
    id integer PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL,
    holder text NOT NULL DEFAULT '', since timestamptz);
INSERT INTO leader (id, epoch) VALUES (1, 0);
""",
    ),
    (
        2,
        """
CREATE TABLE refusals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time bigint NOT NULL,
    sender text NOT NULL, instruction_id text NOT NULL, kind text NOT NULL,
    reason text NOT NULL, corridor text NOT NULL);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class NotLeader(StoreError):
    """Raised when a block commit finds that another process has taken leadership since."""


def public_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port = str(params.get("host", "")), str(params.get("port", ""))
    user, name = str(params.get("user", "")), str(params.get("dbname", ""))
    where = f"{host}:{port}" if port else f"{host}"
    return f"postgresql://{user + '@' if user else ''}{where}/{name}"


def connect(url: str, **options: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """One autocommit connection with the store's connection options."""
    try:
        return psycopg.connect(make_conninfo(url, **CONNECT_OPTIONS), autocommit=True, **options)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to {public_url(url)}: {exc}") from exc


def migrate(url: str) -> int:
    """Apply the migrations this database has not had yet; the schema version now."""
    with connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    return SCHEMA_VERSION


class PostgresStore(StateReads):
    """Durable home of one bridge ledger, in a PostgreSQL database shared by bridge processes."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self._description = public_url(url)
        migrate(url)
        self.epoch: int | None = None  # the fencing token, once this process leads
        self.failed = False  # a block commit failed: its outcome may be unknown
        self._pool = ConnectionPool(
            make_conninfo(url, **CONNECT_OPTIONS),
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            open=True,
            name="bridge-store",
        )

    @property
    def description(self) -> str:
        return self._description

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled connection; database failures surface as `StoreError`."""
        try:
            with self._pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                yield conn
        except StoreError:
            raise
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"{self._description}: {exc}") from exc
        except TimeoutError as exc:  # PoolTimeout
            raise StoreError(f"{self._description}: no connection: {exc}") from exc

    def _one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._conn() as conn:
            return conn.execute(query.encode(), args).fetchone()

    def _all(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(query.encode(), args).fetchall()

    # ------------------------------------------------------------------ founding and loading

    def genesis(self) -> Genesis | None:
        row = self._one("SELECT value FROM meta WHERE key='genesis'")
        return None if row is None else Genesis.from_fields(json.loads(row[0]))

    def initialize(self, ledger: Ledger) -> None:
        """Record the genesis and the founding state of a brand-new ledger."""
        genesis_text = json.dumps(ledger.genesis.to_fields(), sort_keys=True)
        try:
            with self._conn() as conn, conn.transaction():
                self._fence(conn)
                inserted = conn.execute(
                    "INSERT INTO meta VALUES ('genesis', %s) ON CONFLICT DO NOTHING",
                    (genesis_text,),
                ).rowcount
                if inserted != 1:
                    raise StoreError(f"{self._description} already holds a ledger")
                conn.execute("INSERT INTO meta VALUES ('schema', %s)", (str(SCHEMA_VERSION),))
                with conn.cursor() as cursor:
                    for table in KV_TABLES:
                        rows = ledger.tables()[table].items()
                        cursor.executemany(
                            "INSERT INTO state VALUES (%s, %s, %s)",
                            [(table, encode_key(k), encode_value(table, v)) for k, v in rows],
                        )
        except psycopg.Error as exc:
            raise StoreError(f"{self._description}: founding failed: {exc}") from exc

    def load(self, *, verifier: Verifier | None, check: SignatureCheck) -> Ledger:
        """Rebuild the ledger from the state tables (one snapshot); re-verify the last blocks."""
        genesis = self.genesis()
        if genesis is None:
            raise StoreError(f"{self._description} holds no ledger")
        self.verify_tail(genesis)
        ledger = stored_ledger(self, genesis, verifier=verifier, check=check)
        query = LOADED_ROWS_QUERY.format("%s", POSTGRES_PVP_STATUS).encode()
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            for table in KV_TABLES:
                rows = conn.execute(query, (table,))
                ledger.load_table(table, (decode_row(table, k, v) for k, v in rows))
            accounts = conn.execute("SELECT participant, currency, available, held FROM accounts")
            ledger.load_table("balances", (((p, c), (a, h)) for p, c, a, h in accounts))
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
        assert row is not None
        ledger.set_next_seq(int(row[0]) + 1)
        return ledger

    def receipts_for(self, keys: Sequence[ReceiptKey]) -> list[Receipt]:
        """The receipts of those (sender, instruction id) keys that settled, from the entries
        table's unique index, in one query (nothing of the index is held in memory)."""
        if not keys:
            return []
        rows = self._all(
            "SELECT e.sender, e.instruction_id, e.body_hash, e.outcome, e.seq "
            "FROM unnest(%s::text[], %s::text[]) AS k(s, i) "
            "JOIN entries e ON e.sender = k.s AND e.instruction_id = k.i",
            ([s for s, _ in keys], [i for _, i in keys]),
        )
        return [Receipt(s, i, bytes(b), Outcome(o), q) for s, i, b, o, q in rows]

    def verify_tail(self, genesis: Genesis, blocks: int = TAIL_BLOCKS_VERIFIED) -> None:
        """Check hash links, Merkle roots and entry ranges of the last `blocks` blocks."""
        check_tail(self, genesis, blocks)

    def _last_seq(self) -> int:
        row = self._one("SELECT COALESCE(MAX(seq), 0) FROM entries")
        assert row is not None
        return int(row[0])

    # ------------------------------------------------------------------ writing

    def _fence(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Inside a write transaction: go on only while this store's epoch is the current one.

        The row lock taken here is held until the commit, so a new leader's epoch increment
        waits for this transaction and every later commit of ours sees the new epoch. The
        transaction may not stand idle longer than the lease (`LEASE_SECONDS`): a leader paused
        mid-commit cannot hold the next one up."""
        if self.epoch is None:
            return
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, true)", (LEASE_TIMEOUT,)
        )
        updated = conn.execute(
            "UPDATE leader SET epoch = epoch WHERE id = 1 AND epoch = %s", (self.epoch,)
        ).rowcount
        if updated != 1:
            raise NotLeader(f"epoch {self.epoch} is over: another bridge process leads now")

    def commit_block(
        self,
        block: SealedBlock,
        batch: Batch,
        events: Sequence[bytes],
        attestations: Sequence[Attestation] = (),
    ) -> int:
        """Write one block, its entries, the changed state, its events and any attestations
        (of earlier blocks) atomically, after checking the fencing token. Returns the id of
        the block's last outbox row (0 when it has no events; ids may skip values)."""
        header = block.header
        entry_rows = entry_row_values(block, batch)
        row_id = 0
        try:
            with self._conn() as conn, conn.transaction(), conn.cursor() as cursor:
                self._fence(conn)
                cursor.execute(
                    "INSERT INTO blocks (height, hash, prev_hash, merkle_root, time, first_seq,"
                    " entry_count) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        header.height,
                        header.hash(),
                        header.prev_hash,
                        header.merkle_root,
                        header.time,
                        header.first_seq,
                        header.entry_count,
                    ),
                )
                with cursor.copy(
                    "COPY entries (seq, height, sender, instruction_id, kind, outcome, time,"
                    " body_hash, data) FROM STDIN"
                ) as copy:
                    for entry_row in entry_rows:
                        copy.write_row(entry_row)
                self._write_changes(cursor, batch)
                for payload in events:
                    cursor.execute(
                        "INSERT INTO outbox (height, payload) VALUES (%s, %s) RETURNING id",
                        (header.height, payload),
                    )
                    (row_id,) = cursor.fetchone() or (0,)
                if attestations:
                    cursor.executemany(
                        _INSERT_ATTESTATION, [_attestation_row(a) for a in attestations]
                    )
        except StoreError as exc:
            self.failed = True
            raise type(exc)(f"commit of block {header.height} failed: {exc}") from exc
        except psycopg.Error as exc:
            self.failed = True
            raise StoreError(f"commit of block {header.height} failed: {exc}") from exc
        return int(row_id)

    @staticmethod
    def _write_changes(cursor: psycopg.Cursor[tuple[Any, ...]], batch: Batch) -> None:
        balances = batch.changes.get("balances", {})
        if balances:
            cursor.executemany(
                "INSERT INTO accounts VALUES (%s, %s, %s, %s) ON CONFLICT (participant, currency)"
                " DO UPDATE SET available = EXCLUDED.available, held = EXCLUDED.held",
                [(p, c, v[0], v[1]) for (p, c), v in balances.items() if v is not None],
            )
        for table in KV_TABLES:
            rows = batch.changes.get(table)
            if not rows:
                continue
            upserts = [
                (table, encode_key(k), encode_value(table, v))
                for k, v in rows.items()
                if v is not None
            ]
            deletes = [(table, encode_key(k)) for k, v in rows.items() if v is None]
            if upserts:
                cursor.executemany(
                    "INSERT INTO state VALUES (%s, %s, %s) ON CONFLICT (tbl, key)"
                    " DO UPDATE SET value = EXCLUDED.value",
                    upserts,
                )
            if deletes:
                cursor.executemany("DELETE FROM state WHERE tbl=%s AND key=%s", deletes)

    def record_refusals(
        self, refusals: Sequence[tuple[int, str, str, str, str, str]], keep: int = REFUSALS_KEPT
    ) -> None:
        """Record refused instructions (time, sender, instruction id, kind, reason, corridor),
        keeping the newest `keep`. Outside the hash chain: a refusal changed nothing."""
        if not refusals:
            return
        try:
            with self._conn() as conn, conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO refusals (time, sender, instruction_id, kind, reason, corridor) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    list(refusals),
                )
                cursor.execute(
                    "DELETE FROM refusals WHERE id <= (SELECT MAX(id) FROM refusals) - %s",
                    (keep,),
                )
        except psycopg.Error as exc:
            raise StoreError(f"recording {len(refusals)} refusals failed: {exc}") from exc

    def add_attestation(self, attestation: Attestation) -> bool:
        """Store one attestation; False if this central bank already attested this height."""
        return self.add_attestations([attestation])[0]

    def add_attestations(self, attestations: Sequence[Attestation]) -> list[bool]:
        """Store several attestations in one transaction; per attestation, False if that
        central bank had already attested that height. Needs no leadership: an attestation
        is checked against a stored block before it comes here, and storing one is idempotent."""
        added = []
        try:
            with self._conn() as conn, conn.transaction():
                for attestation in attestations:
                    cursor = conn.execute(_INSERT_ATTESTATION, _attestation_row(attestation))
                    added.append(cursor.rowcount == 1)
        except psycopg.Error as exc:
            raise StoreError(f"attestations not stored: {exc}") from exc
        return added

    def set_outbox_cursor(self, consumer: str, last_id: int) -> None:
        with self._conn() as conn:
            conn.execute(
                # never backwards: a deposed leader's late last write lands after the new
                # leader's (duplicates at the next start, had it moved the cursor back)
                "INSERT INTO outbox_cursor VALUES (%s, %s) ON CONFLICT (consumer)"
                " DO UPDATE SET last_id = GREATEST(outbox_cursor.last_id, EXCLUDED.last_id)",
                (consumer, last_id),
            )

    # ------------------------------------------------------------------ reading

    def head(self) -> BlockHeader | None:
        row = self._one(f"{_HEADER} ORDER BY height DESC LIMIT 1")
        return None if row is None else _header(row)

    def header(self, height: int) -> BlockHeader | None:
        row = self._one(f"{_HEADER} WHERE height=%s", (height,))
        return None if row is None else _header(row)

    def headers(self, first: int, last: int) -> Iterator[BlockHeader]:
        rows = self._all(f"{_HEADER} WHERE height BETWEEN %s AND %s ORDER BY height", (first, last))
        return (_header(row) for row in rows)

    def _stored_hash(self, height: int) -> bytes:
        row = self._one("SELECT hash FROM blocks WHERE height=%s", (height,))
        if row is None:
            raise LogIntegrityError(f"block {height}", "missing")
        return bytes(row[0])

    def block_entry_bytes(self, height: int) -> list[bytes]:
        rows = self._all(
            "SELECT e.data FROM blocks b JOIN entries e "
            "ON e.seq BETWEEN b.first_seq AND b.first_seq + b.entry_count - 1 "
            "WHERE b.height=%s ORDER BY e.seq",
            (height,),
        )
        return [bytes(row[0]) for row in rows]

    def entries_from(self, seq: int, limit: int = 1000) -> list[tuple[int, int, bytes]]:
        """(seq, height, canonical bytes) of entries from `seq` on, at most `limit`."""
        rows = self._all(
            "SELECT seq, height, data FROM entries WHERE seq >= %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [(s, h, bytes(d)) for s, h, d in rows]

    def entry_location(self, sender: str, instruction_id: str) -> tuple[int, int] | None:
        row = self._one(
            "SELECT seq, height FROM entries WHERE sender=%s AND instruction_id=%s",
            (sender, instruction_id),
        )
        return None if row is None else (row[0], row[1])

    def attestations(self, height: int) -> list[Attestation]:
        rows = self._all(
            "SELECT height, block_hash, central_bank, signature FROM attestations "
            "WHERE height=%s ORDER BY central_bank",
            (height,),
        )
        return [Attestation(h, bytes(b), c, bytes(s)) for h, b, c, s in rows]

    def covering_attestations(self, height: int) -> list[Attestation]:
        rows = self._all(COVERING_QUERY.format("%s"), (height,))
        return [Attestation(h, bytes(b), c, bytes(s)) for h, b, c, s in rows]

    def attested_heights(self) -> dict[str, int]:
        rows = self._all(
            "SELECT central_bank, MAX(height) FROM attestations GROUP BY central_bank", ()
        )
        return {str(c): int(h) for c, h in rows}

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]:
        rows = self._all(
            "SELECT id, payload FROM outbox WHERE id > %s ORDER BY id LIMIT %s", (last_id, limit)
        )
        return [(i, bytes(p)) for i, p in rows]

    def outbox_cursor(self, consumer: str) -> int:
        row = self._one("SELECT last_id FROM outbox_cursor WHERE consumer=%s", (consumer,))
        return 0 if row is None else int(row[0])

    def outbox_last_id(self) -> int:
        """Id of the newest outbox row (0 if none): with a cursor, the backlog in rows."""
        row = self._one("SELECT COALESCE(MAX(id), 0) FROM outbox", ())
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ committed state

    def _kv(self, table: str, key: Any) -> Any:
        row = self._one(
            "SELECT key, value FROM state WHERE tbl=%s AND key=%s", (table, encode_key(key))
        )
        return None if row is None else decode_row(table, row[0], row[1])[1]

    def _kv_all(self, table: str) -> list[Any]:
        rows = self._all("SELECT key, value FROM state WHERE tbl=%s ORDER BY key", (table,))
        return [decode_row(table, k, v)[1] for k, v in rows]

    def accounts(
        self, participant: str = "", currency: str = ""
    ) -> list[tuple[str, str, int, int, bool]]:
        """(participant, currency, available, held, frozen) of committed accounts, filtered."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT participant, currency, available, held FROM accounts "
                "WHERE (%(p)s = '' OR participant = %(p)s) AND (%(c)s = '' OR currency = %(c)s) "
                "ORDER BY participant, currency",
                {"p": participant, "c": currency},
            ).fetchall()
            frozen = {
                decode_row("frozen", k, v)[0]
                for k, v in conn.execute("SELECT key, value FROM state WHERE tbl='frozen'")
            }
        return [(p, c, a, h, (p, c) in frozen) for p, c, a, h in rows]

    def receipt(self, sender: str, instruction_id: str) -> tuple[Receipt, int] | None:
        row = self._one(
            "SELECT body_hash, outcome, seq, height FROM entries "
            "WHERE sender=%s AND instruction_id=%s",
            (sender, instruction_id),
        )
        if row is None:
            return None
        return Receipt(sender, instruction_id, bytes(row[0]), Outcome(row[1]), row[2]), row[3]

    def count(self, table: str) -> int:
        if table not in ("blocks", "entries", "attestations", "outbox", "accounts"):
            raise ValueError(f"no table {table}")
        row = self._one(f"SELECT COUNT(*) FROM {table}")
        assert row is not None
        return int(row[0])


_HEADER = "SELECT height, prev_hash, merkle_root, time, first_seq, entry_count FROM blocks"
_INSERT_ATTESTATION = (
    "INSERT INTO attestations (height, central_bank, block_hash, signature)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


def _attestation_row(a: Attestation) -> tuple[int, str, bytes, bytes]:
    return (a.height, a.central_bank, a.block_hash, a.signature)


def _header(row: Sequence[Any]) -> BlockHeader:
    return BlockHeader(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4], row[5])


class Leadership:
    """The right to sequence: a session advisory lock held on a connection of its own.

    `try_acquire` takes the lock if nobody holds it and then increments the epoch (the fencing
    token); the lock is released when this connection closes, including when the process dies
    (the server notices the closed socket at once, a silent machine within the keepalive time).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.holder = f"{socket.gethostname()}/{os.getpid()}"  # who leads, for operators
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.epoch: int | None = None

    def try_acquire(self) -> int | None:
        """The new epoch if this process now leads; None if another one does."""
        try:
            if self._conn is None or self._conn.closed:
                migrate(self.url)
                self._conn = connect(self.url, options=SERVER_KEEPALIVES)
                self._lease(self._conn)
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            if row is None or not row[0]:
                return None
            self.epoch = self._next_epoch(self._conn)
        except (psycopg.Error, StoreError):
            self.release()
            return None
        return self.epoch

    def _next_epoch(self, conn: psycopg.Connection[tuple[Any, ...]]) -> int:
        """Increment the epoch, holding the lock. The increment waits for a commit of the
        previous leader still in flight, for as long as the lease: a commit holding the fencing
        row longer is stuck (its process paused mid-statement, where no idle timeout reaches
        it) and belongs to a deposed leader, so its session is ended and its commit fails."""
        for _ in range(3):
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (LEASE_TIMEOUT,))
                    bumped = conn.execute(
                        "UPDATE leader SET epoch = epoch + 1, holder = %s, since = now()"
                        " WHERE id = 1 RETURNING epoch",
                        (self.holder,),
                    ).fetchone()
                assert bumped is not None
                return int(bumped[0])
            except psycopg.errors.LockNotAvailable:
                ended = conn.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE granted"
                    " AND relation = 'leader'::regclass AND mode = 'RowExclusiveLock'"
                    " AND pid <> pg_backend_pid()"
                ).fetchall()
                log.warning(
                    "ended the stuck commit of a deposed leader",
                    extra={"backends": [pid for pid, _ in ended]},
                )
        raise StoreError("the fencing row stays locked: another session holds it")

    @staticmethod
    def _lease(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """End this session when it has been silent for the lease (PostgreSQL 14 or later;
        older servers fall back to the keepalives alone)."""
        try:
            conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (LEASE_TIMEOUT,))
        except psycopg.errors.UndefinedObject:
            log.warning("the server has no idle_session_timeout: a paused leader keeps the lock")

    def held(self) -> bool:
        """Whether the lock's session is still alive (a round trip to the server)."""
        if self._conn is None or self.epoch is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        """Give the lock up (closing its session releases it)."""
        self.epoch = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


_COPIED = (
    ("meta", "key, value", "key"),
    ("blocks", "height, hash, prev_hash, merkle_root, time, first_seq, entry_count", "height"),
    ("entries", "seq, height, sender, instruction_id, kind, outcome, time, body_hash, data", "seq"),
    ("attestations", "height, central_bank, block_hash, signature", "height, central_bank"),
    ("accounts", "participant, currency, available, held", "participant, currency"),
    ("state", "tbl, key, value", "tbl, key"),
    ("outbox", "height, payload", "id"),
    ("outbox_cursor", "consumer, last_id", "consumer"),
    ("refusals", "time, sender, instruction_id, kind, reason, corridor", "id"),
)


def copy_from_sqlite(path: str, url: str) -> int:
    """Copy a SQLite store into an empty PostgreSQL database (moving a bridge onto a server),
    in one transaction, with its recorded refusals; the number of entries copied. The
    database's constraints check the copy as it goes (hash links, heights, balances)."""
    import sqlite3

    migrate(url)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with connect(url) as conn, conn.transaction(), conn.cursor() as cursor:
            if cursor.execute("SELECT 1 FROM meta").fetchone() is not None:
                raise StoreError(f"{public_url(url)} already holds a ledger")
            present = {name for (name,) in source.execute("SELECT name FROM sqlite_master")}
            for table, names, key in _COPIED:
                if table not in present:  # a store older than the table
                    continue
                rows = source.execute(f"SELECT {names} FROM {table} ORDER BY {key}")
                with cursor.copy(f"COPY {table} ({names}) FROM STDIN".encode()) as copy:
                    for row in rows:
                        copy.write_row(row)
            row = cursor.execute("SELECT COUNT(*) FROM entries").fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"copy into {public_url(url)} failed: {exc}") from exc
    finally:
        source.close()
    return 0 if row is None else int(row[0])
