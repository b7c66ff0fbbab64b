"""Who is waiting for which block: live followers of the chain and of finality."""

from __future__ import annotations

import asyncio

from bridge.log.blocks import Attestation, BlockHeader, is_final
from bridge.store.base import Store


class ChainFeed:
    """Tracks the head and the final height; wakes streams when either moves."""

    def __init__(self, store: Store, quorum: int) -> None:
        self.store = store
        self.quorum = quorum
        head = store.head()
        self.height = 0 if head is None else head.height
        self.final_height = self._scan_final(head)
        self._changed = asyncio.Condition()

    def _scan_final(self, head: BlockHeader | None) -> int:
        final = 0
        if head is None:
            return 0
        for header in self.store.headers(1, head.height):
            if not is_final(self.store.attestations(header.height), header.hash(), self.quorum):
                break
            final = header.height
        return final

    def block_sealed(self, height: int) -> None:
        self.height = height
        asyncio.get_running_loop().create_task(self._notify())

    def attested(self, attestation: Attestation) -> None:
        self.refresh_final()

    def refresh_final(self) -> None:
        """Move the final height on as far as the stored attestations allow."""
        advanced = False
        while self.final_height < self.height:
            height = self.final_height + 1
            header = self.store.header(height)
            if header is None or not is_final(
                self.store.attestations(height), header.hash(), self.quorum
            ):
                break
            self.final_height = height
            advanced = True
        if advanced:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_height_above(self, height: int, timeout: float | None = None) -> int:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.height > height), timeout)
        return self.height

    async def wait_final_at_least(self, height: int, timeout: float | None = None) -> int:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.final_height >= height), timeout
            )
        return self.final_height
