"""A node's edge as one server interceptor: the in-flight bound, the caller check and the
request guard, in that order, run by one `intercept_service` per call.

grpc.aio runs a server's interceptors as a chain of coroutines: per call and per interceptor
one `intercept_service` and one continuation, before the handler is known. The three checks of
a node's edge need none of that: each is a decision on the method and metadata (shed the call;
refuse its caller) or a wrapper of the method's handler, built once per method
(`InFlightLimit.bound`, `RequestGuard.guard`). `Edge` runs them as plain calls, as the chain
`[InFlightLimit, CallerAuthInterceptor, RequestGuard]` would, with the same answers: a call
past the bound is shed before anything else, an unauthenticated one is refused before its
request is read, a bad request is refused by the guard, and the bound counts every call it
lets through, authenticated or not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bridge.node.caller_auth import CallerAuthInterceptor
from bridge.node.request_guard import RequestGuard
from bridge.node.shedding import INTERCEPT, InFlightLimit

__all__ = ["Edge"]


class Edge(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """The in-flight bound, the caller check (when given) and the request guard of a server."""

    def __init__(
        self,
        limit: InFlightLimit,
        guard: RequestGuard,
        callers: CallerAuthInterceptor | None = None,
    ) -> None:
        self.limit = limit
        self.guard = guard
        self.callers = callers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        shed = self.limit.shedding(method)
        if shed is not None:
            return shed
        handler = await continuation(handler_call_details)
        with INTERCEPT.timed():
            handler = self.guard.guard(method, handler)
            if self.callers is not None:
                handler = self.callers.admit(
                    method, handler, handler_call_details.invocation_metadata
                )
            return self.limit.bound(method, handler)
