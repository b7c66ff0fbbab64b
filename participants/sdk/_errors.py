"""The errors a bank client raises: a failed call, with the bridge's reason code and its kind.

Every failed call is one of two kinds, never both:

- `Refusal`: refused on its merits (INSUFFICIENT_FUNDS, ID_CONFLICT, BAD_SIGNATURE, ...). Final:
  nothing changed, and sending the same instruction again gets the same answer.
- `NotDecided`: the outcome is not known or the work was not done (UNAVAILABLE, OUTCOME_UNKNOWN,
  OVERLOADED, CATCHING_UP, or a transport failure: node unreachable, call cancelled, deadline
  passed). Resubmit the same instruction id: the bridge is idempotent, so it settles at most
  once and a resubmission of a settled one returns its original receipt (`duplicate=True`).

Both derive from `BridgeRpcError`, which callers may catch for either; `retryable` tells them
apart too. The SDK retries `NotDecided` calls itself (see `RetryPolicy`).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from bridge.errors import STATUS_OF_REASON, Reason, Refused
from bridge.status import refusal_from_rpc_error

__all__ = ["BridgeRpcError", "NotDecided", "Refusal"]

_DETAILS_KEY = "grpc-status-details-bin"


class BridgeRpcError(Exception):
    """Raised when a call fails: refused by the bridge or a node, or not decided.

    `reason` is the stable machine-readable code to branch on (`Reason.INSUFFICIENT_FUNDS`,
    `Reason.OUTCOME_UNKNOWN`, ...), `code` the gRPC status and `message` the readable
    explanation; `retry_after` is the server's pushback hint in seconds (a `RetryInfo` detail),
    when it gave one. Constructing a `BridgeRpcError` gives a `Refusal` or a `NotDecided` as the
    reason says.
    """

    def __new__(
        cls,
        reason: Reason,
        code: grpc.StatusCode,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> BridgeRpcError:
        kind = cls
        if cls is BridgeRpcError:
            kind = NotDecided if reason.retryable else Refusal
        error: BridgeRpcError = super().__new__(kind)
        return error

    def __init__(
        self,
        reason: Reason,
        code: grpc.StatusCode,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{reason.value} ({code.name}): {message}")
        self.reason = reason
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.reason, self.code, self.message, self.retry_after))

    @property
    def retryable(self) -> bool:
        """True when not decided (resubmit the same instruction id), False for a refusal."""
        return self.reason.retryable

    @property
    def transient(self) -> bool:
        """The same as `retryable` (the name earlier versions used)."""
        return self.retryable

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> BridgeRpcError:
        """The error for a failed gRPC call (reason from the status's ErrorInfo detail; a
        status without one failed in transport and is not decided)."""
        code: grpc.StatusCode = error.code()
        details = _status_details(error)
        retry_after = _retry_delay(details)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and details is None:
            # the client's own deadline passed: not the bridge's INSTRUCTION_EXPIRED refusal
            message = f"no answer in time: {error.details() or ''}"
            return cls(Reason.OUTCOME_UNKNOWN, code, message, retry_after=retry_after)
        refusal = refusal_from_rpc_error(error)
        return cls(refusal.reason, code, refusal.message, retry_after=retry_after)

    @classmethod
    def from_refusal(cls, refusal: Refused) -> BridgeRpcError:
        """The error for a request refused before it was sent (the code the node would give)."""
        return cls(
            refusal.reason, grpc.StatusCode[STATUS_OF_REASON[refusal.reason]], refusal.message
        )


class Refusal(BridgeRpcError):
    """Raised when a call is refused on its merits: final, nothing changed; do not retry."""


class NotDecided(BridgeRpcError):
    """Raised when a call's outcome is not decided: resubmit the same instruction id."""


def _rebuild(
    reason: Reason, code: grpc.StatusCode, message: str, retry_after: float | None
) -> BridgeRpcError:
    return BridgeRpcError(reason, code, message, retry_after=retry_after)


def _status_details(error: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def _retry_delay(status: status_pb2.Status | None) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail, if the status carries one."""
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delay = info.retry_delay
            seconds = float(delay.seconds) + float(delay.nanos) / 1e9
            return max(seconds, 0.0)
    return None
