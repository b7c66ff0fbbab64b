"""Authenticated reads: a bank signs every query it sends to its central bank's node.

The signed message is defined once, in `bridge.wire.query_message` (domain tag, full RPC
method name, canonical JSON of the request without `auth.signature`). A node accepts a query
whose `auth.timestamp` is within `MAX_SKEW_MS` of its own clock.
"""

from __future__ import annotations

from typing import Any, TypeVar

from bridge.crypto import Signer, Verifier
from bridge.errors import Reason, Refused
from bridge.wire import query_message

MAX_SKEW_MS = 120_000
R = TypeVar("R")


def sign_query(method: str, request: R, requester: str, signer: Signer, now_ms: int) -> R:
    """Fill `request.auth` for `requester` (the request's other fields must be set already)."""
    auth: Any = request.auth  # type: ignore[attr-defined]
    auth.requester = requester
    auth.timestamp = now_ms
    auth.signature = signer.sign(query_message(method, request))  # type: ignore[arg-type]
    return request


def check_query(
    method: str, request: Any, public_key: bytes | None, verifier: Verifier, now_ms: int
) -> str:
    """Return the authenticated requester, or raise Refused (UNAUTHENTICATED)."""
    auth = request.auth
    if not auth.requester or not auth.signature:
        raise Refused(Reason.MISSING_SIGNATURE, "query is not signed (auth.requester/signature)")
    if public_key is None:
        raise Refused(Reason.UNKNOWN_SIGNER, f"unknown requester {auth.requester}")
    if abs(now_ms - auth.timestamp) > MAX_SKEW_MS:
        raise Refused(
            Reason.INSTRUCTION_EXPIRED,
            f"query timestamp {auth.timestamp} is more than {MAX_SKEW_MS} ms from now ({now_ms})",
        )
    if not verifier.verify(public_key, query_message(method, request), bytes(auth.signature)):
        raise Refused(Reason.BAD_SIGNATURE, f"query signature by {auth.requester} does not verify")
    return str(auth.requester)
