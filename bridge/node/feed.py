"""Who is waiting for which block: live followers of the chain and of finality."""

from __future__ import annotations

import asyncio

from bridge.log.blocks import Attestation, final_height
from bridge.store.base import Store


class ChainFeed:
    """Tracks the head and the final height; wakes streams when either moves.

    Height h is final once a quorum of central banks attested h or a later height: the feed
    keeps each central bank's highest attested height (every attestation was checked against
    the chain before it was stored), and the final height is the quorum-th highest of them."""

    def __init__(self, store: Store, quorum: int) -> None:
        self.store = store
        self.quorum = quorum
        head = store.head()
        self.height = 0 if head is None else head.height
        self.attested_heights: dict[str, int] = store.attested_heights()
        self.final_height = min(self.height, final_height(self.attested_heights, quorum))
        self._changed = asyncio.Condition()

    def block_sealed(self, height: int) -> None:
        self.height = height
        asyncio.get_running_loop().create_task(self._notify())

    def attested(self, attestation: Attestation) -> None:
        """Count a stored attestation (checked against the chain)."""
        bank = attestation.central_bank
        if attestation.height > self.attested_heights.get(bank, 0):
            self.attested_heights[bank] = attestation.height
            self._advance()

    def refresh_final(self) -> None:
        """Move the final height on as far as the stored attestations allow (attestations
        another bridge process stored included)."""
        for bank, height in self.store.attested_heights().items():
            if height > self.attested_heights.get(bank, 0):
                self.attested_heights[bank] = height
        self._advance()

    def _advance(self) -> None:
        final = min(self.height, final_height(self.attested_heights, self.quorum))
        if final > self.final_height:
            self.final_height = final
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
