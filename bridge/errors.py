"""Every refusal the bridge can give, as one error hierarchy with reason codes.

The ledger core raises these; the gRPC edge maps each reason to a status code once
(`bridge.errors.STATUS_OF_REASON`), so every service answers the same refusal the same way.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Machine-readable reason code carried by every refusal."""

    # the request itself is malformed
    MALFORMED = "MALFORMED"
    NON_POSITIVE_AMOUNT = "NON_POSITIVE_AMOUNT"
    AMOUNT_OVERFLOW = "AMOUNT_OVERFLOW"
    SAME_PARTY = "SAME_PARTY"
    SAME_CURRENCY = "SAME_CURRENCY"
    FIELD_TOO_LONG = "FIELD_TOO_LONG"
    BAD_PAGE_SIZE = "BAD_PAGE_SIZE"
    RATE_MISMATCH = "RATE_MISMATCH"
    # who is asking
    MISSING_SIGNATURE = "MISSING_SIGNATURE"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_SIGNER = "UNKNOWN_SIGNER"
    CALLER_NOT_AUTHENTICATED = "CALLER_NOT_AUTHENTICATED"
    # allowed to ask?
    NOT_ISSUER = "NOT_ISSUER"
    NOT_HOME_CENTRAL_BANK = "NOT_HOME_CENTRAL_BANK"
    NOT_A_PARTY = "NOT_A_PARTY"
    NOT_A_BANK = "NOT_A_BANK"
    CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"
    # state does not allow it
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    PARTICIPANT_SUSPENDED = "PARTICIPANT_SUSPENDED"
    TRANSFER_LIMIT_EXCEEDED = "TRANSFER_LIMIT_EXCEEDED"
    DAILY_LIMIT_EXCEEDED = "DAILY_LIMIT_EXCEEDED"
    CORRIDOR_NOT_ALLOWED = "CORRIDOR_NOT_ALLOWED"
    PVP_NOT_PENDING = "PVP_NOT_PENDING"
    PVP_TERMS_MISMATCH = "PVP_TERMS_MISMATCH"
    BALANCE_OVERFLOW = "BALANCE_OVERFLOW"
    NOT_YET_EXPIRED = "NOT_YET_EXPIRED"
    # identity clashes
    ID_CONFLICT = "ID_CONFLICT"
    ALREADY_REGISTERED = "ALREADY_REGISTERED"
    PVP_EXISTS = "PVP_EXISTS"
    # unknown things
    UNKNOWN_PARTICIPANT = "UNKNOWN_PARTICIPANT"
    UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"
    UNKNOWN_PVP = "UNKNOWN_PVP"
    UNKNOWN_INSTRUCTION = "UNKNOWN_INSTRUCTION"
    # time
    INSTRUCTION_EXPIRED = "INSTRUCTION_EXPIRED"
    PVP_EXPIRED = "PVP_EXPIRED"
    INVALID_TIME = "INVALID_TIME"
    # not decided (retryable): nothing is final, resubmit the same instruction id
    UNAVAILABLE = "UNAVAILABLE"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    OVERLOADED = "OVERLOADED"
    CATCHING_UP = "CATCHING_UP"

    @property
    def retryable(self) -> bool:
        """True for "not decided" (resubmit the same instruction id), False for a final refusal."""
        return self in RETRYABLE_REASONS


# "Not decided": the request was not (or may not have been) acted on; the same instruction id
# may and should be resubmitted. Every other reason is a final refusal that changed nothing.
#   UNAVAILABLE      the node could not take the request now (nothing was done)
#   OUTCOME_UNKNOWN  the request may or may not have settled (e.g. its block's commit failed)
#   OVERLOADED       work shed at once under load (RESOURCE_EXHAUSTED, with a pushback hint)
#   CATCHING_UP      the node is still replaying the log and cannot answer from it yet
RETRYABLE_REASONS: frozenset[Reason] = frozenset(
    {Reason.UNAVAILABLE, Reason.OUTCOME_UNKNOWN, Reason.OVERLOADED, Reason.CATCHING_UP}
)


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class Refused(BridgeError):
    """Raised when an instruction or query is refused; state is left exactly as it was."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class LogIntegrityError(BridgeError):
    """Raised when a stored or exported settlement log fails verification."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class StoreError(BridgeError):
    """Raised when the durable store cannot commit or load; nothing was acknowledged."""


# gRPC status code names (grpc.StatusCode members) per reason. Kept as names so this
# module stays free of the grpc import; `bridge.node.status` turns them into codes.
STATUS_OF_REASON: dict[Reason, str] = {
    Reason.MALFORMED: "INVALID_ARGUMENT",
    Reason.NON_POSITIVE_AMOUNT: "INVALID_ARGUMENT",
    Reason.AMOUNT_OVERFLOW: "INVALID_ARGUMENT",
    Reason.SAME_PARTY: "INVALID_ARGUMENT",
    Reason.SAME_CURRENCY: "INVALID_ARGUMENT",
    Reason.FIELD_TOO_LONG: "INVALID_ARGUMENT",
    Reason.BAD_PAGE_SIZE: "INVALID_ARGUMENT",
    Reason.RATE_MISMATCH: "INVALID_ARGUMENT",
    Reason.MISSING_SIGNATURE: "UNAUTHENTICATED",
    Reason.BAD_SIGNATURE: "UNAUTHENTICATED",
    Reason.UNKNOWN_SIGNER: "UNAUTHENTICATED",
    Reason.CALLER_NOT_AUTHENTICATED: "UNAUTHENTICATED",
    Reason.NOT_ISSUER: "PERMISSION_DENIED",
    Reason.NOT_HOME_CENTRAL_BANK: "PERMISSION_DENIED",
    Reason.NOT_A_PARTY: "PERMISSION_DENIED",
    Reason.NOT_A_BANK: "PERMISSION_DENIED",
    Reason.CALLER_NOT_ALLOWED: "PERMISSION_DENIED",
    Reason.INSUFFICIENT_FUNDS: "FAILED_PRECONDITION",
    Reason.ACCOUNT_FROZEN: "FAILED_PRECONDITION",
    Reason.PARTICIPANT_SUSPENDED: "FAILED_PRECONDITION",
    Reason.TRANSFER_LIMIT_EXCEEDED: "FAILED_PRECONDITION",
    Reason.DAILY_LIMIT_EXCEEDED: "FAILED_PRECONDITION",
    Reason.CORRIDOR_NOT_ALLOWED: "FAILED_PRECONDITION",
    Reason.PVP_NOT_PENDING: "FAILED_PRECONDITION",
    Reason.PVP_TERMS_MISMATCH: "FAILED_PRECONDITION",
    Reason.BALANCE_OVERFLOW: "FAILED_PRECONDITION",
    Reason.NOT_YET_EXPIRED: "FAILED_PRECONDITION",
    Reason.ID_CONFLICT: "ALREADY_EXISTS",
    Reason.ALREADY_REGISTERED: "ALREADY_EXISTS",
    Reason.PVP_EXISTS: "ALREADY_EXISTS",
    Reason.UNKNOWN_PARTICIPANT: "NOT_FOUND",
    Reason.UNKNOWN_CURRENCY: "NOT_FOUND",
    Reason.UNKNOWN_PVP: "NOT_FOUND",
    Reason.UNKNOWN_INSTRUCTION: "NOT_FOUND",
    Reason.INSTRUCTION_EXPIRED: "DEADLINE_EXCEEDED",
    Reason.PVP_EXPIRED: "DEADLINE_EXCEEDED",
    Reason.INVALID_TIME: "INVALID_ARGUMENT",
    Reason.UNAVAILABLE: "UNAVAILABLE",
    Reason.OUTCOME_UNKNOWN: "UNAVAILABLE",
    Reason.OVERLOADED: "RESOURCE_EXHAUSTED",
    Reason.CATCHING_UP: "UNAVAILABLE",
}
