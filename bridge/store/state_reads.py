"""Typed reads of the ledger's state rows, the same for every store.

Every store keeps the ledger's state as (table, key, value) rows encoded by `bridge.store.codec`;
a store supplies the two raw look-ups (`_kv`, `_kv_all`) and this mixin turns them into the
typed reads the services and tools use.
"""

from __future__ import annotations

from typing import Any

from bridge.core.ledger import PvpState
from bridge.domain import Currency, Participant, Policy


class StateReads:
    """participant / participants / currencies / policy / pvp / supply over `_kv` rows."""

    def _kv(self, table: str, key: Any) -> Any:
        """The decoded value of one state row, or None."""
        raise NotImplementedError

    def _kv_all(self, table: str) -> list[Any]:
        """The decoded values of every row of one state table, in key order."""
        raise NotImplementedError

    def participant(self, participant_id: str) -> Participant | None:
        value: Participant | None = self._kv("participants", participant_id)
        return value

    def participants(self) -> list[Participant]:
        return self._kv_all("participants")

    def currencies(self) -> list[Currency]:
        return self._kv_all("currencies")

    def policy(self, central_bank: str) -> Policy:
        value: Policy | None = self._kv("policies", central_bank)
        return Policy() if value is None else value

    def pvp(self, proposer: str, pvp_id: str) -> PvpState | None:
        value: PvpState | None = self._kv("pvps", (proposer, pvp_id))
        return value

    def closed_pvp(self, key: tuple[str, str]) -> PvpState | None:
        """A PvP's committed state by (proposer, pvp id): the ledger's look-up of the closed
        PvPs it no longer holds in memory."""
        return self.pvp(*key)

    def supply(self, currency: str) -> tuple[int, int] | None:
        value: tuple[int, int] | None = self._kv("supply", currency)
        return value
