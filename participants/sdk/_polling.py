"""Waiting by polling: the pauses between attempts and when to give up, for both clients."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from bridge.errors import Reason
from participants.sdk._errors import BridgeRpcError
from participants.sdk._models import InstructionResult

__all__ = ["DEFAULT_WAIT", "NOT_RECORDED_YET", "budget", "not_final", "polling", "waitable"]

DEFAULT_WAIT = 30.0
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 0.5
_SHORTEST_CALL = 0.001
# what a status query answers until the instruction is recorded and our node has seen it
NOT_RECORDED_YET = (Reason.UNKNOWN_INSTRUCTION, Reason.NOT_A_PARTY)


def polling(deadline: float) -> Iterator[float | None]:
    """The pause after each attempt, growing; None for the last attempt before `deadline`."""
    pause = FIRST_PAUSE
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= pause:
            yield None
            return
        yield pause
        pause = min(pause * 2, LONGEST_PAUSE)


def budget(deadline: float, per_call: float) -> float:
    """The deadline of one attempt: the call's own, cut to what is left of the wait."""
    return max(min(deadline - time.monotonic(), per_call), _SHORTEST_CALL)


def waitable(error: BridgeRpcError, *reasons: Reason) -> bool:
    """Whether waiting may go on after `error`: the awaited thing is not there yet."""
    return error.reason in reasons or error.transient


def not_final(result: InstructionResult, timeout: float) -> BridgeRpcError:
    return BridgeRpcError(
        Reason.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{result.instruction_id} is recorded (block {result.block_height}) but not final "
        f"after {timeout} s",
    )
