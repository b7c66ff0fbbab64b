"""Settlement notifications for one bank over MQTT, resumable, de-duplicated, gap-free.

    async for event in AsyncSettlementSubscriber(mqtt, central_bank="PBOC", bank="ICBC",
                                                 from_seq=120, gaps=icbc.watch):
        print(event.seq, event.outcome, event.instruction_id)

Messages arrive at least once (QoS 1) on `cbdc-bridge/v1/{central_bank}/{bank}/settlements`
(see `bridge.notify`). The subscriber yields each seq once, in increasing order: a message
whose seq it has already passed is a duplicate and is dropped; a message whose `prev_seq` is
beyond the last seq yielded reveals a gap, which is filled from the central bank node's gRPC
settlement stream (`gaps`, e.g. `AsyncBankClient.watch`) before the message itself is yielded.
On subscribing, the broker's retained message (the topic's latest) reveals what was missed
since `from_seq`. Without `gaps`, a gap is counted in `missed` and logged. The connection is
re-established with jittered backoff. `SettlementSubscriber` is the same for synchronous code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt

from bridge.domain import Leg, Millis
from bridge.notify import MqttSettings, settlement_topic
from participants.sdk._models import HistoryEntry

log = logging.getLogger("participants.sdk.events")

# the gRPC stream of one bank's entries from a seq on (`BankClient.watch`, `AsyncBankClient.watch`)
AsyncEntries = Callable[[int], AsyncIterator[HistoryEntry]]
Entries = Callable[[int], Iterator[HistoryEntry]]


@dataclass(frozen=True, slots=True)
class SettlementEvent:
    """One settlement-log entry the bank is a party to, as notified."""

    seq: int
    height: int
    time: Millis
    kind: str
    outcome: str
    sender: str
    instruction_id: str
    pvp_id: str
    legs: tuple[Leg, ...]
    reference: str
    prev_seq: int = 0  # the previous seq on the same topic (0: none, or unknown)
    source: str = "mqtt"  # "mqtt", or "grpc" when it filled a gap

    @classmethod
    def from_message(cls, payload: bytes | bytearray) -> SettlementEvent:
        data: dict[str, Any] = json.loads(payload)
        return cls(
            seq=int(data["seq"]),
            height=int(data["height"]),
            time=int(data["time"]),
            kind=str(data["kind"]),
            outcome=str(data["outcome"]),
            sender=str(data["sender"]),
            instruction_id=str(data["instruction_id"]),
            pvp_id=str(data.get("pvp_id", "")),
            legs=tuple(Leg(p, q, c, int(a)) for p, q, c, a in data.get("legs", [])),
            reference=str(data.get("reference", "")),
            prev_seq=int(data.get("prev_seq", 0)),
        )

    @classmethod
    def from_history(cls, entry: HistoryEntry) -> SettlementEvent:
        return cls(
            seq=entry.seq,
            height=entry.block_height,
            time=entry.time,
            kind=entry.kind,
            outcome=entry.outcome.value,
            sender=entry.sender,
            instruction_id=entry.instruction_id,
            pvp_id=str(getattr(entry.instruction, "pvp_id", "")),
            legs=entry.legs,
            reference=entry.reference,
            source="grpc",
        )


class AsyncSettlementSubscriber:
    """Iterate (`async for`) over one bank's settlements; see the module docstring.

    `from_seq` 0 means from the next settlement on; `identifier` makes a persistent MQTT session
    (the broker queues messages while the subscriber is away) instead of a clean one.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        central_bank: str,
        bank: str,
        from_seq: int = 0,
        gaps: AsyncEntries | None = None,
        identifier: str | None = None,
        reconnect_cap: float = 5.0,
    ) -> None:
        self.mqtt = mqtt
        self.topic = settlement_topic(central_bank, bank)
        self.gaps = gaps
        self.identifier = identifier
        self.reconnect_cap = reconnect_cap
        self.last_seq: int | None = from_seq - 1 if from_seq > 0 else None
        self.duplicates = 0  # messages dropped as already yielded
        self.filled = 0  # entries yielded from the gRPC stream to fill gaps
        self.missed = 0  # gaps that could not be filled (no `gaps` stream)

    @property
    def stats(self) -> dict[str, int]:
        """Duplicates dropped, entries filled from gRPC, gaps left unfilled."""
        return {"duplicates": self.duplicates, "filled": self.filled, "missed": self.missed}

    def __aiter__(self) -> AsyncIterator[SettlementEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[SettlementEvent]:
        attempt = 0
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(self.topic, qos=1)
                    attempt = 0
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes | bytearray)
                        event = SettlementEvent.from_message(message.payload)
                        async for ready in self._accept(event, stale=message.retain):
                            yield ready
            except aiomqtt.MqttError as error:
                pause = random.uniform(0.1, min(self.reconnect_cap, 0.2 * 2**attempt))
                attempt += 1
                log.warning("mqtt unavailable: %s; reconnecting in %.1f s", error, pause)
                await asyncio.sleep(pause)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.mqtt.host,
            self.mqtt.port,
            username=self.mqtt.username,
            password=self.mqtt.password,
            identifier=self.identifier,
            clean_session=self.identifier is None,
        )

    async def _accept(self, event: SettlementEvent, stale: bool) -> AsyncIterator[SettlementEvent]:
        """What to yield for one received message: gap fillers, then the event, or nothing."""
        if self.last_seq is None:
            self.last_seq = event.seq if stale else event.prev_seq  # from now on
            if stale:
                return
        if event.seq <= self.last_seq:
            self.duplicates += 1
            return
        if event.prev_seq > self.last_seq:
            async for filler in self._fill(self.last_seq, event.prev_seq):
                self.last_seq = filler.seq
                self.filled += 1
                yield filler
        self.last_seq = event.seq
        yield event

    async def _fill(self, after: int, upto: int) -> AsyncIterator[SettlementEvent]:
        """Entries `after` < seq <= `upto` from the gRPC stream."""
        if self.gaps is None:
            self.missed += 1
            log.warning("missed entries after seq %d up to %d (no gRPC stream given)", after, upto)
            return
        log.info("filling entries after seq %d up to %d from the gRPC stream", after, upto)
        entries = self.gaps(after + 1)
        try:
            async for entry in entries:
                if entry.seq > upto:
                    break
                yield SettlementEvent.from_history(entry)
                if entry.seq == upto:
                    break
        finally:
            await entries.aclose()  # type: ignore[attr-defined]


class SettlementSubscriber:
    """`AsyncSettlementSubscriber` for synchronous code: `for event in subscriber: ...`.

    `gaps` is a blocking stream such as `BankClient.watch`; iteration runs a private event loop.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        central_bank: str,
        bank: str,
        from_seq: int = 0,
        gaps: Entries | None = None,
        identifier: str | None = None,
    ) -> None:
        self._async = AsyncSettlementSubscriber(
            mqtt,
            central_bank=central_bank,
            bank=bank,
            from_seq=from_seq,
            gaps=None if gaps is None else _blocking(gaps),
            identifier=identifier,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Duplicates dropped, entries filled from gRPC, gaps left unfilled."""
        return self._async.stats

    def __iter__(self) -> Iterator[SettlementEvent]:
        loop = asyncio.new_event_loop()
        events = self._async.events()
        try:
            while True:
                yield loop.run_until_complete(anext(events))
        finally:
            loop.run_until_complete(events.aclose())  # type: ignore[attr-defined]
            loop.close()


def _blocking(entries: Entries) -> AsyncEntries:
    """A blocking entry stream as an async one (for the synchronous facade's own loop)."""

    async def stream(from_seq: int) -> AsyncIterator[HistoryEntry]:
        for entry in entries(from_seq):
            yield entry

    return stream
