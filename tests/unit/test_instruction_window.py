"""The SubmitStream window counts instructions: a batch takes room for each of its items."""

from __future__ import annotations

import asyncio

from participants.central_bank.service import InstructionWindow


async def _spin() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_batch_waits_until_room_for_all_its_instructions() -> None:
    """With 3 of 4 places taken, a batch of 2 waits; it goes once 1 more is released."""
    window = InstructionWindow(4)
    await window.take(3)
    waiting = asyncio.create_task(window.take(2))
    await _spin()
    assert not waiting.done()
    window.release(1)
    await _spin()
    assert waiting.done()
    assert window.free == 0


async def test_single_instructions_and_batches_count_alike() -> None:
    """Four single instructions fill a window of 4 as one batch of 4 does; releasing frees it."""
    window = InstructionWindow(4)
    for _ in range(4):
        await window.take(1)
    blocked = asyncio.create_task(window.take(1))
    await _spin()
    assert not blocked.done()
    window.release(4)
    await _spin()
    assert blocked.done()
    await window.take(3)
    assert window.free == 0
