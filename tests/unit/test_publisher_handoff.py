"""The publisher's in-memory hand-over never passes a block it was not handed, its cursor write
survives the writer thread's end, and its own packets refuse what MQTT cannot carry."""

from __future__ import annotations

import asyncio

import pytest

from bridge.node.publisher import MAX_REMAINING_LENGTH, _remaining_length
from bridge.settlement import OutboxRow
from tests.unit.test_publisher_step_down import started_publisher


async def test_a_block_not_handed_over_sends_the_publisher_to_the_store() -> None:
    """Blocks handed in height order are kept in memory; a skipped height (a block committed
    but never handed over) drops them and reads from the store from the cursor, so the cursor
    can never move past that block's row."""
    publishing, publisher, _, writer = await started_publisher()
    try:
        publisher._caught_up = True
        publisher.block_committed(OutboxRow(1, [], 7))
        publisher.block_committed(OutboxRow(2, [], 8))
        assert [row.row_id for row in publisher._handed] == [1, 2]
        assert publisher._caught_up
        publisher.block_committed(OutboxRow(4, [], 10))  # height 9 was never handed over
        assert not publisher._handed
        assert not publisher._caught_up
        publisher._caught_up = True  # the store read caught up meanwhile
        publisher.block_committed(OutboxRow(5, [], 11))
        assert [row.row_id for row in publisher._handed] == [5]
    finally:
        publishing.install(None)
        await publishing.stop()
        writer.shutdown(wait=True)


async def test_a_cursor_mark_after_the_writer_thread_is_gone_still_lands() -> None:
    """A PUBACK or the mark timer after the sequencer's writer thread was shut down (a leader
    stepping down) writes the cursor on the publisher's reader thread instead of failing."""
    publishing, publisher, cursors, writer = await started_publisher()
    writer.shutdown(wait=True)
    publisher._acked = 17
    publisher._mark_now()
    await asyncio.wait_for(publisher._marking, 10)
    assert cursors.written[-1] == 17
    publishing.install(None)
    await publishing.stop()


def test_a_packet_longer_than_mqtt_can_carry_is_refused() -> None:
    """The remaining length encodes up to 268,435,455 in four bytes; beyond is a ValueError,
    never a malformed packet."""
    assert _remaining_length(MAX_REMAINING_LENGTH) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError, match="at most"):
        _remaining_length(MAX_REMAINING_LENGTH + 1)
