"""What the bridge needs from a store: the interface every store implements.

The settlement engine, the block feed and the ledger service are written against `Store`, never
against one database. A store keeps the genesis, the blocks and their entries (the log), the
committed ledger state, the attestations and the event outbox; `commit_block` writes a block and
everything it changed in one transaction, so an acknowledged settlement is durable and a failed
commit leaves nothing behind. `tests/integration/test_store_conformance.py` holds every store to
the same behaviour.

`open_store(spec)` picks the implementation: a `postgresql://` URL is a PostgreSQL database,
anything else a SQLite file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from bridge.core.ledger import Batch, Ledger, PvpState, ReceiptKey, SignatureCheck
from bridge.crypto import Verifier
from bridge.domain import Currency, Genesis, Participant, Policy, Receipt
from bridge.log.blocks import Attestation, BlockHeader, SealedBlock

POSTGRES_PREFIXES = ("postgresql://", "postgres://")
REFUSALS_KEPT = 100_000  # newest refused instructions a store keeps; older ones are dropped


class Store(Protocol):
    """Durable home of one bridge ledger."""

    @property
    def description(self) -> str:
        """Where the ledger lives, for messages (a path, or a URL without its password)."""
        ...

    def close(self) -> None: ...

    # founding and loading
    def genesis(self) -> Genesis | None: ...

    def initialize(self, ledger: Ledger) -> None: ...

    def load(self, *, verifier: Verifier | None, check: SignatureCheck) -> Ledger: ...

    def verify_tail(self, genesis: Genesis, blocks: int = ...) -> None: ...

    def receipts_for(self, keys: Sequence[ReceiptKey]) -> list[Receipt]:
        """The stored receipts of those (sender, instruction id) keys that settled (the
        idempotency index, looked up rather than loaded: `bridge.store.receipts`)."""
        ...

    # writing
    def commit_block(
        self,
        block: SealedBlock,
        batch: Batch,
        events: Sequence[bytes],
        attestations: Sequence[Attestation] = (),
    ) -> int:
        """Write a block with its entries, changed state, outbox rows (one per `events`
        payload) and attestations in one transaction; the id of its last outbox row (0 when
        none), which a publisher handed the block's events in memory takes as its cursor."""
        ...

    def record_refusals(
        self, refusals: Sequence[tuple[int, str, str, str, str, str]], keep: int = ...
    ) -> None:
        """Record refused instructions (time, sender, instruction id, kind, reason,
        corridor) outside the hash chain, keeping the newest `keep`."""
        ...

    def add_attestation(self, attestation: Attestation) -> bool: ...

    def add_attestations(self, attestations: Sequence[Attestation]) -> list[bool]: ...

    def set_outbox_cursor(self, consumer: str, last_id: int) -> None: ...

    # the log
    def head(self) -> BlockHeader | None: ...

    def header(self, height: int) -> BlockHeader | None: ...

    def headers(self, first: int, last: int) -> Iterator[BlockHeader]: ...

    def block_entry_bytes(self, height: int) -> list[bytes]: ...

    def entries_from(self, seq: int, limit: int = 1000) -> list[tuple[int, int, bytes]]: ...

    def entry_location(self, sender: str, instruction_id: str) -> tuple[int, int] | None: ...

    def attestations(self, height: int) -> list[Attestation]: ...

    def covering_attestations(self, height: int) -> list[Attestation]:
        """Each central bank's first attestation of `height` or a later height (which covers
        `height`: every header commits to the one before)."""
        ...

    def attested_heights(self) -> dict[str, int]:
        """Each central bank's highest stored attestation height."""
        ...

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]: ...

    def outbox_cursor(self, consumer: str) -> int: ...

    def outbox_last_id(self) -> int:
        """Id of the newest outbox row (0 if none): with a cursor, the backlog in rows."""
        ...

    # committed state
    def accounts(
        self, participant: str = "", currency: str = ""
    ) -> list[tuple[str, str, int, int, bool]]: ...

    def participant(self, participant_id: str) -> Participant | None: ...

    def participants(self) -> list[Participant]: ...

    def currencies(self) -> list[Currency]: ...

    def policy(self, central_bank: str) -> Policy: ...

    def pvp(self, proposer: str, pvp_id: str) -> PvpState | None: ...

    def closed_pvp(self, key: tuple[str, str]) -> PvpState | None:
        """A PvP's committed state by (proposer, pvp id) (the ledger's look-up of the closed
        PvPs it does not hold in memory); failures raise StoreError."""
        ...

    def supply(self, currency: str) -> tuple[int, int] | None: ...

    def receipt(self, sender: str, instruction_id: str) -> tuple[Receipt, int] | None: ...

    def count(self, table: str) -> int: ...


def is_postgres(spec: str | Path) -> bool:
    return str(spec).startswith(POSTGRES_PREFIXES)


def open_store(spec: str | Path) -> Store:
    """The store at `spec`: a PostgreSQL URL, or else the path of a SQLite file."""
    if is_postgres(spec):
        from bridge.store.postgres import PostgresStore

        return PostgresStore(str(spec))
    from bridge.store.sqlite import SqliteStore

    return SqliteStore(spec)
