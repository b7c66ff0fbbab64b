"""A bridge process stepping down (PostgreSQL, several processes) stops its sequencer, and with
it the ledger's writer thread, before its publisher has stopped: the publisher's last cursor
write must still land, or the next leader publishes again what was already acknowledged."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from bridge.node.publisher import PublishWhileLeading
from bridge.notify import MqttSettings
from participants.launcher import free_ports


class Outbox:
    """An empty outbox: nothing to read, nothing published yet."""

    def outbox_cursor(self, consumer: str) -> int:
        return 0

    def outbox_after(self, last_id: int, limit: int = 500) -> list[tuple[int, bytes]]:
        return []

    def outbox_last_id(self) -> int:
        return 0


class Cursors:
    def __init__(self) -> None:
        self.written: list[int] = []

    def set_outbox_cursor(self, consumer: str, last_id: int) -> None:
        self.written.append(last_id)


async def started_publisher() -> tuple[PublishWhileLeading, Any, Cursors, ThreadPoolExecutor]:
    """A leading publisher on an empty outbox, its cursor writes recorded, no broker."""
    cursors = Cursors()
    writer = ThreadPoolExecutor(max_workers=1)
    sequencer: Any = SimpleNamespace(writer=writer, engine=SimpleNamespace(store=cursors))
    (port,) = free_ports(1)  # no broker: the publisher retries its connection meanwhile
    publishing = PublishWhileLeading(MqttSettings(port=port), Outbox(), feed=None)  # type: ignore[arg-type]
    publishing.install(sequencer)
    await asyncio.sleep(0.2)
    assert publishing.publisher is not None
    return publishing, publishing.publisher, cursors, writer


async def test_the_last_cursor_write_lands_after_the_writer_thread_is_gone() -> None:
    """As `_lead` does when stepping down: `install(None)` (the publisher's stop is only
    scheduled), then the sequencer stops and shuts its writer thread down, then the process
    waits for its publishing to stop: the acknowledged position is stored all the same."""
    publishing, publisher, cursors, writer = await started_publisher()
    publisher._acked = 42  # the broker acknowledged the rows up to 42
    publishing.install(None)  # stepping down
    writer.shutdown(wait=True)  # the sequencer's stop
    await publishing.stop()
    assert cursors.written == [42]
