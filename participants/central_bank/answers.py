"""The answers to a group of requests, each answered on its own, awaited together.

A central bank node hands a bank's batch of instructions on as a group: to a peer node for
endorsement, to the bridge link for settlement. Each instruction still gets its own answer,
but the caller waits once for the whole group (one future, not one per instruction), and
whoever answers sets each instruction's answer by its index.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["Answers"]

T = TypeVar("T")


class Answers(Generic[T]):
    """One answer per request of a group; `done` resolves once every one is in.

    A caller that stops waiting (cancelled, or timed out) leaves `done` cancelled: from then on
    no answer is taken, and `waits` tells whoever holds a request that nobody waits for it.
    """

    __slots__ = ("done", "left", "results")

    def __init__(self, size: int) -> None:
        self.results: list[T | None] = [None] * size
        self.left = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not size:
            self.done.set_result(None)

    def waits(self, index: int) -> bool:
        """Whether request `index` still waits for its answer."""
        return self.results[index] is None and not self.done.done()

    def answer(self, index: int, result: T) -> None:
        """Set the answer to request `index` (the first one given counts; none once the
        caller stopped waiting)."""
        if self.results[index] is None and not self.done.done():
            self.results[index] = result
            self.left -= 1
            if not self.left:
                self.done.set_result(None)
