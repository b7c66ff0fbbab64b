"""Storing central bank attestations in batches, off the event loop.

Every sealed block is attested by every central bank node, one `SubmitAttestation` call each.
Storing each in its own transaction on the event loop made the bridge wait, for every
attestation, for the SQLite write lock (held while the sequencer commits a block in its worker
thread) and then for an fsync. `AttestationWriter` queues them and stores whatever is waiting in
one transaction on the ledger's writer thread (the one that commits blocks, so the two never
contend for the lock); a caller is answered once its attestation is durable, as before.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from bridge.log.blocks import Attestation
from bridge.store.sqlite import SqliteStore

__all__ = ["AttestationWriter"]


class AttestationWriter:
    """Durable, batched `add_attestation`: one transaction per batch, on `writer`."""

    def __init__(self, store: SqliteStore, writer: Executor) -> None:
        self.store = store
        self.writer = writer
        self._waiting: list[tuple[Attestation, asyncio.Future[bool]]] = []
        self._writing = False

    async def add(self, attestation: Attestation) -> bool:
        """Store one attestation; False if this central bank already attested this height."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((attestation, future))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    added = await asyncio.get_running_loop().run_in_executor(
                        self.writer, self.store.add_attestations, [a for a, _ in batch]
                    )
                except Exception as error:  # every waiter learns the commit failed
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), stored in zip(batch, added, strict=True):
                    if not future.done():
                        future.set_result(stored)
        finally:
            self._writing = False
