"""The one error a bank client raises: a failed call, with the bridge's reason code."""

from __future__ import annotations

import grpc

from bridge.errors import STATUS_OF_REASON, Reason, Refused
from bridge.status import refusal_from_rpc_error

__all__ = ["BridgeRpcError"]

_DETAILS_KEY = "grpc-status-details-bin"
_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class BridgeRpcError(Exception):
    """Raised when a call fails: refused by the bridge or a node, or not answered in time.

    `reason` is the stable machine-readable code to branch on (`Reason.INSUFFICIENT_FUNDS`,
    `Reason.PVP_TERMS_MISMATCH`, ...), `code` the gRPC status and `message` the readable
    explanation. A request refused by the bridge changed nothing. A call that failed in
    transport (`transient`: the node was unreachable or the deadline passed) may or may not
    have been recorded: resubmit the same instruction id to find out, it is idempotent.
    """

    def __init__(self, reason: Reason, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{reason.value} ({code.name}): {message}")
        self.reason = reason
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        """True when the call failed in transport rather than being refused on its merits."""
        return self.reason is Reason.UNAVAILABLE and self.code in _TRANSPORT_CODES

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> BridgeRpcError:
        """The error for a failed gRPC call (reason from the status's ErrorInfo detail)."""
        code: grpc.StatusCode = error.code()
        refusal = refusal_from_rpc_error(error)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and not _has_details(error):
            # the client's own deadline passed: not the bridge's INSTRUCTION_EXPIRED refusal
            return cls(Reason.UNAVAILABLE, code, f"no answer in time: {error.details() or ''}")
        return cls(refusal.reason, code, refusal.message)

    @classmethod
    def from_refusal(cls, refusal: Refused) -> BridgeRpcError:
        """The error for a request refused before it was sent (the code the node would give)."""
        return cls(
            refusal.reason, grpc.StatusCode[STATUS_OF_REASON[refusal.reason]], refusal.message
        )


def _has_details(error: grpc.RpcError) -> bool:
    return any(key == _DETAILS_KEY for key, _ in error.trailing_metadata() or ())
