"""A bound on the calls a node has in flight: what it cannot take at once is shed at once.

Each node (bridge or central bank) counts the unary calls it is working on. A call arriving
while the count is at the bound is answered straight away with `RESOURCE_EXHAUSTED`, reason
OVERLOADED (retryable: nothing was done, resubmit the same instruction id) and a
`google.rpc.RetryInfo` pushback hint, so a client learns within milliseconds instead of
queueing until its deadline passes.

Why an interceptor rather than `grpc.aio.server(maximum_concurrent_rpcs=N)`: gRPC's own limit
answers RESOURCE_EXHAUSTED with a bare message ("Concurrent RPC limit exceeded!"), without the
ErrorInfo reason and retryable flag every refusal of this project carries, nor a pushback hint;
and it counts every call alike, so long-lived streams (settlement watches, block streams, the
central bank nodes' Submit streams) would hold slots for hours and health checks would be shed
exactly when an operator needs them. This interceptor bounds unary calls only (streams have
their own windows) and never sheds health checks.

It also records the caller's deadline for the call being served (`call_deadline`), so work
handed on (e.g. to the bridge) can be dropped once the caller has gone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, NoReturn

import grpc

from bridge.errors import Reason, Refused
from bridge.metrics import stage
from bridge.status import rich_status

log = logging.getLogger("bridge.shedding")

# The bound is a queue length: a node settles a few hundred payments a second on the project's
# 2-core machine, so 256 calls in flight is about half a second of work. Calls beyond what the
# Python server has picked up wait in the gRPC core where nothing can count them; the lower the
# bound, the sooner the node gets back to picking calls up and shedding them. Measured with
# `cbdc-bridge bench flood` (4,000 calls at once): a bound of 1000 answered the burst in 8-12 s,
# 100 in about 2 s at the same settlement rate.
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_RETRY_AFTER = 0.2  # seconds: the pushback hint sent with a shed call
NEVER_SHED = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# The event-loop time by which the caller of the unary call being served wants its answer
# (None: no deadline, or not inside a bounded call).
_CALL_DEADLINE: ContextVar[float | None] = ContextVar("call_deadline", default=None)

Behavior = Callable[[Any, Any], Any]

# the interceptors' own work per call (this one, the caller check's, the request guard's)
INTERCEPT = stage("intercept")


def call_deadline() -> float | None:
    """The caller's deadline (event-loop time) of the unary call being served, if it set one."""
    return _CALL_DEADLINE.get()


class InFlightLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Server interceptor: at most `limit` unary calls in flight, the excess shed at once."""

    def __init__(
        self, limit: int = DEFAULT_MAX_IN_FLIGHT, *, retry_after: float = DEFAULT_RETRY_AFTER
    ) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight bound must be at least 1, got {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = 0
        self.shed = 0  # calls shed since the node started
        self._episode_shed = 0  # calls shed in the current overload episode (0: none)
        # the same answer for every shed call, built once: shedding must stay cheap
        self._overloaded = rich_status(
            Refused(
                Reason.OVERLOADED,
                f"the node is at its bound of {limit} calls in flight; nothing was done, "
                f"resubmit the same instruction id after {retry_after:g} s",
            ),
            retry_after=retry_after,
        )
        # a call to a unary method known to be bounded, arriving past the bound, is answered
        # without decoding its request or running the interceptors behind this one
        self._bounded_methods: set[str] = set()
        self._shedder = grpc.unary_unary_rpc_method_handler(self._shed_raw)
        # the bounded handler of each method, built once per handler behind it
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if self.in_flight >= self.limit and method in self._bounded_methods:
            return self._shedder
        handler = await continuation(handler_call_details)
        with INTERCEPT.timed():
            if handler is None or handler.unary_unary is None or method.startswith(NEVER_SHED):
                return handler
            cached = self._wrapped.get(method)
            if cached is not None and cached[0] is handler:
                return cached[1]
            self._bounded_methods.add(method)
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._bounded(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            self._wrapped[method] = (handler, wrapped)
            return wrapped

    def _bounded(self, behavior: Behavior) -> Behavior:
        async def bounded(request: Any, context: Any) -> Any:
            if self.in_flight >= self.limit:
                await self._shed(context)
            with INTERCEPT.timed():
                self.in_flight += 1
                remaining = context.time_remaining()
                if remaining is not None:
                    _CALL_DEADLINE.set(asyncio.get_running_loop().time() + remaining)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            finally:
                self.in_flight -= 1
                if self._episode_shed and self.in_flight <= self.limit // 2:
                    log.info(
                        "load back under the in-flight bound",
                        extra={"shed": self._episode_shed, "max_in_flight": self.limit},
                    )
                    self._episode_shed = 0

        return bounded

    async def _shed_raw(self, request: bytes, context: Any) -> NoReturn:
        await self._shed(context)

    async def _shed(self, context: Any) -> NoReturn:
        self.shed += 1
        if not self._episode_shed:
            log.warning(
                "overloaded: shedding calls beyond the in-flight bound",
                extra={"max_in_flight": self.limit, "retry_after_s": self.retry_after},
            )
        self._episode_shed += 1
        await context.abort_with_status(self._overloaded)
        raise AssertionError("abort_with_status returned")  # pragma: no cover
