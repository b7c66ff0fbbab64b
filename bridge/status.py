"""Refusals on the wire: one mapping from `Refused` to a gRPC status with rich details.

Servers abort with the status code of the refusal's reason (bridge.errors.STATUS_OF_REASON),
its readable message, and a `google.rpc.ErrorInfo` detail whose `reason` is the reason code and
whose metadata says `retryable` ("true": not decided, resubmit the same instruction id; "false":
refused, final, nothing changed) and `outcome` ("not_decided" or "refused"), so clients branch on
stable codes rather than on message text.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from bridge.errors import STATUS_OF_REASON, Reason, Refused

ERROR_DOMAIN = "cbdc-bridge.v1"
_DETAILS_KEY = "grpc-status-details-bin"


def status_code_of(refusal: Refused) -> grpc.StatusCode:
    code: grpc.StatusCode = grpc.StatusCode[STATUS_OF_REASON[refusal.reason]]
    return code


def rich_status(refusal: Refused, *, retry_after: float | None = None) -> grpc.Status:
    """The refusal as a status with its ErrorInfo; with `retry_after` (seconds), also a
    `google.rpc.RetryInfo` pushback hint: resubmit no sooner than that."""
    code = status_code_of(refusal)
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=refusal.reason.value,
            domain=ERROR_DOMAIN,
            metadata={
                "retryable": "true" if refusal.reason.retryable else "false",
                "outcome": "not_decided" if refusal.reason.retryable else "refused",
            },
        )
    )
    details = [detail]
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        hint = any_pb2.Any()
        hint.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(hint)
    message = status_pb2.Status(code=code.value[0], message=refusal.message, details=details)
    status: grpc.Status = rpc_status.to_status(message)
    return status


async def abort(context: Any, refusal: Refused, *, retry_after: float | None = None) -> NoReturn:
    """Abort the current aio RPC with the refusal's status code, message and reason (and a
    RetryInfo pushback hint when `retry_after` is given)."""
    await context.abort_with_status(rich_status(refusal, retry_after=retry_after))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def refusal_from_rpc_error(error: grpc.RpcError) -> Refused:
    """Turn a failed call back into a `Refused` (reason from the rich details when present)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.reason in Reason.__members__:
                    return Refused(Reason(info.reason), message)
    return Refused(_FALLBACK.get(code, Reason.UNAVAILABLE), f"{code.name}: {message}")


# A status without an ErrorInfo detail came from the transport, the gRPC library or a server
# that gives no reason. A deadline that passed, a call cancelled in flight or a server error
# says nothing about whether the far side acted: OUTCOME_UNKNOWN (never the INSTRUCTION_EXPIRED
# refusal). The codes gRPC defines as answers on the merits stay final refusals.
_FALLBACK: dict[grpc.StatusCode, Reason] = {
    grpc.StatusCode.UNAVAILABLE: Reason.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.CANCELLED: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.ABORTED: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.UNKNOWN: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.INTERNAL: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.DATA_LOSS: Reason.OUTCOME_UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.OVERLOADED,
    grpc.StatusCode.UNAUTHENTICATED: Reason.BAD_SIGNATURE,
    grpc.StatusCode.PERMISSION_DENIED: Reason.NOT_A_PARTY,
    grpc.StatusCode.NOT_FOUND: Reason.UNKNOWN_INSTRUCTION,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.MALFORMED,
    grpc.StatusCode.FAILED_PRECONDITION: Reason.MALFORMED,
    grpc.StatusCode.ALREADY_EXISTS: Reason.MALFORMED,
    grpc.StatusCode.OUT_OF_RANGE: Reason.MALFORMED,
    grpc.StatusCode.UNIMPLEMENTED: Reason.MALFORMED,
}


def retry_after_of(error: grpc.RpcError) -> float | None:
    """The RetryInfo pushback hint (seconds) a failed call carries, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    seconds: float = info.retry_delay.ToNanoseconds() / 1e9
                    return seconds
    return None
