"""The check every store runs on the newest blocks before it serves a ledger again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from bridge.domain import Genesis
from bridge.errors import LogIntegrityError
from bridge.log.blocks import BlockHeader
from bridge.log.merkle import merkle_root

TAIL_BLOCKS_VERIFIED = 16


class BlockReads(Protocol):
    def head(self) -> BlockHeader | None: ...

    def header(self, height: int) -> BlockHeader | None: ...

    def headers(self, first: int, last: int) -> Iterator[BlockHeader]: ...

    def block_entry_bytes(self, height: int) -> list[bytes]: ...

    def _stored_hash(self, height: int) -> bytes: ...

    def _last_seq(self) -> int: ...


def check_tail(store: BlockReads, genesis: Genesis, blocks: int) -> None:
    """Check hash links, Merkle roots and entry ranges of the last `blocks` blocks, and that no
    entry is stored beyond the last block; raises LogIntegrityError naming the first fault."""
    head = store.head()
    if head is None:
        return
    first = max(1, head.height - blocks + 1)
    previous = genesis.hash() if first == 1 else store._stored_hash(first - 1)
    first_header = store.header(first) if first > 1 else None
    expected_seq = 1 if first_header is None else first_header.first_seq
    for header in store.headers(first, head.height):
        where = f"block {header.height}"
        if header.prev_hash != previous:
            raise LogIntegrityError(where, "previous-hash link is broken")
        if header.first_seq != expected_seq:
            raise LogIntegrityError(where, f"first seq {header.first_seq}, expected {expected_seq}")
        leaves = store.block_entry_bytes(header.height)
        if len(leaves) != header.entry_count:
            raise LogIntegrityError(
                where, f"{len(leaves)} entries stored, header says {header.entry_count}"
            )
        if merkle_root(leaves) != header.merkle_root:
            raise LogIntegrityError(where, "Merkle root does not match the stored entries")
        if store._stored_hash(header.height) != header.hash():
            raise LogIntegrityError(where, "stored block hash does not match its header")
        previous = header.hash()
        expected_seq += header.entry_count
    last_seq = store._last_seq()
    if last_seq != expected_seq - 1:
        raise LogIntegrityError("entries", f"last seq {last_seq} beyond the last block")
