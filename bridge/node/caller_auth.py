"""Who is calling: central bank nodes authenticate to the bridge and to each other.

Only central bank nodes call the bridge (`BridgeLedger`) and a peer node's endorsement RPCs.
The callee learns the caller's central bank id in one of two ways:

- **Mutual TLS on**: from the client certificate. The network's CA gives every central bank
  node's certificate the role `urn:cbdc-bridge:central-bank:<ID>` as a SAN URI
  (`participants.pki`); a certificate without it (a bank's, the bridge's) is not a caller.
- **TLS off**: from a signed call. The client adds three metadata entries:
  `x-bridge-caller` (its central bank id), `x-bridge-time` (Unix ms) and `x-bridge-signature`
  (base64 P-256 signature by the central bank's genesis key over `caller_message`: a domain
  tag, the chain id, the callee, the full method name, the caller and the time). The callee
  accepts it within `FRESHNESS_MS` of its own clock. Anyone on the path can replay a header
  for that window to the same callee and method, as with any bearer credential over
  plaintext; mutual TLS is the way to confidentiality.

Cost: a long-lived stream is checked once when it opens. The client reuses one signed header
per method for `REUSE_MS`, and the callee remembers the headers it verified until they leave
the window, so a steady caller costs one P-256 check per method per `REUSE_MS`.

Refusals: no or invalid credentials → UNAUTHENTICATED / CALLER_NOT_AUTHENTICATED; a
certificate of the network's CA that is no central bank node's → PERMISSION_DENIED /
CALLER_NOT_ALLOWED. Health and reflection stay open to anyone.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import grpc
from cryptography import x509

from bridge.crypto import Signer, Verifier
from bridge.errors import Reason, Refused
from bridge.metrics import stage
from bridge.status import rich_status

__all__ = [
    "BRIDGE_AUDIENCE",
    "CALLER_HEADER",
    "FRESHNESS_MS",
    "SIGNATURE_HEADER",
    "TIME_HEADER",
    "CallerAuthInterceptor",
    "CallerAuthenticator",
    "CallerSigner",
    "SignedChannel",
    "SyncSignedCallInterceptor",
    "caller_message",
    "central_bank_of_certificate",
    "central_bank_role",
]

CALLER_HEADER = "x-bridge-caller"
TIME_HEADER = "x-bridge-time"
SIGNATURE_HEADER = "x-bridge-signature"
CALLER_DOMAIN = b"cbdc-bridge/v1/caller\x00"
ROLE_PREFIX = "urn:cbdc-bridge:central-bank:"
BRIDGE_AUDIENCE = "bridge"  # the callee name the bridge checks; a node checks its own id
FRESHNESS_MS = 60_000
REUSE_MS = 20_000  # a client signs a method's header again after this long
VERIFIED_KEPT = 4096

Metadata = Sequence[tuple[str, str | bytes]]

AUTH = stage("auth")  # checking who calls (certificate or signed headers; `verify` apart)
INTERCEPT = stage("intercept")  # the interceptors' own work per call


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def central_bank_role(central_bank: str) -> str:
    """The SAN URI that makes a certificate a central bank node's."""
    return f"{ROLE_PREFIX}{central_bank}"


@lru_cache(maxsize=256)
def central_bank_of_certificate(pem: bytes) -> str | None:
    """The central bank whose node role the PEM certificate carries (None: no such role)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(ROLE_PREFIX):
            return uri[len(ROLE_PREFIX) :]
    return None


def caller_message(chain_id: str, audience: str, method: str, caller: str, time_ms: int) -> bytes:
    """What a central bank node signs to call `method` on `audience` at `time_ms`."""
    fields = (chain_id, audience, method, caller, str(time_ms))
    return CALLER_DOMAIN + "\n".join(fields).encode()


# ---------------------------------------------------------------------------- the caller


class CallerSigner:
    """Signed-call headers of one central bank node for one callee, reused for REUSE_MS."""

    def __init__(
        self,
        *,
        chain_id: str,
        caller: str,
        audience: str,
        signer: Signer,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.chain_id = chain_id
        self.caller = caller
        self.audience = audience
        self.signer = signer
        self.clock = clock
        self._headers: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}

    def headers(self, method: str) -> tuple[tuple[str, str], ...]:
        now = self.clock()
        cached = self._headers.get(method)
        if cached is not None and 0 <= now - cached[0] < REUSE_MS:
            return cached[1]
        message = caller_message(self.chain_id, self.audience, method, self.caller, now)
        signature = base64.b64encode(self.signer.sign(message)).decode()
        headers = (
            (CALLER_HEADER, self.caller),
            (TIME_HEADER, str(now)),
            (SIGNATURE_HEADER, signature),
        )
        self._headers[method] = (now, headers)
        return headers

    def metadata(self, method: str | bytes, metadata: Iterable[tuple[str, Any]] | None) -> Any:
        name = method.decode() if isinstance(method, bytes) else method
        return (*(metadata or ()), *self.headers(name))


class _SignedMultiCallable:
    """One method of a `SignedChannel`: the call, with the signed headers added."""

    __slots__ = ("_call", "_method", "_signer")

    def __init__(self, call: Any, method: str, signer: CallerSigner) -> None:
        self._call = call
        self._method = method
        self._signer = signer

    def __call__(self, request: Any = None, *, metadata: Any = None, **options: Any) -> Any:
        return self._call(
            request, metadata=self._signer.metadata(self._method, metadata), **options
        )


class SignedChannel(grpc.aio.Channel):  # type: ignore[misc]  # grpc is untyped
    """An aio channel whose every call carries the node's signed-call headers.

    The headers go in as call metadata, added by the method objects the stubs hold, not by a
    client interceptor: grpc.aio runs each intercepted call as a task of its own (and its
    interceptor in another) and reads every message of an intercepted stream through one more
    async generator, which cost a node more than its signed headers on every Submit and block
    stream message and every unary call it makes (docs/performance.md).
    """

    def __init__(self, channel: grpc.aio.Channel, signer: CallerSigner) -> None:
        self._channel = channel
        self.signer = signer

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SignedMultiCallable(
            self._channel.unary_unary(method, *args, **kwargs), method, self.signer
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SignedMultiCallable(
            self._channel.unary_stream(method, *args, **kwargs), method, self.signer
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SignedMultiCallable(
            self._channel.stream_unary(method, *args, **kwargs), method, self.signer
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SignedMultiCallable(
            self._channel.stream_stream(method, *args, **kwargs), method, self.signer
        )

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> SignedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)

    def get_state(self, try_to_connect: bool = False) -> Any:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class SyncSignedCallInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The same for synchronous channels (`grpc.intercept_channel`): tools and tests."""

    def __init__(self, signer: CallerSigner) -> None:
        self.signer = signer

    def _details(self, details: Any) -> grpc.ClientCallDetails:
        signed: Any = _CallDetails(
            details.method,
            details.timeout,
            self.signer.metadata(details.method, details.metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        return signed

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


# ---------------------------------------------------------------------------- the callee


class CallerAuthenticator:
    """Checks that a call comes from a central bank node; returns its central bank id."""

    def __init__(
        self,
        *,
        central_bank_keys: Mapping[str, bytes],
        chain_id: str,
        audience: str,
        tls: bool,
        verifier: Verifier,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.keys = dict(central_bank_keys)
        self.chain_id = chain_id
        self.audience = audience
        self.tls = tls
        self.verifier = verifier
        self.clock = clock
        self._verified: OrderedDict[tuple[str, str, int, str], None] = OrderedDict()

    def of_context(self, context: Any, method: str) -> str:
        """The calling central bank of an RPC in progress; raises Refused."""
        with AUTH.timed():
            if self.tls:
                return self.of_certificate(context.auth_context())
            return self.of_metadata(context.invocation_metadata() or (), method)

    def of_certificate(self, auth_context: Mapping[str, Iterable[bytes]]) -> str:
        certificates = list(auth_context.get("x509_pem_cert", ()))
        if not certificates:
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED, "the caller presented no client certificate"
            )
        central_bank = central_bank_of_certificate(bytes(certificates[0]))
        if central_bank is None or central_bank not in self.keys:
            names = b", ".join(bytes(n) for n in auth_context.get("x509_common_name", ()))
            raise Refused(
                Reason.CALLER_NOT_ALLOWED,
                f"certificate {names.decode(errors='replace') or '?'} is not a central bank "
                "node's: only central bank nodes may call this",
            )
        return central_bank

    def of_metadata(self, metadata: Iterable[tuple[str, Any]], method: str) -> str:
        headers = dict(metadata)
        caller = headers.get(CALLER_HEADER)
        stamp = headers.get(TIME_HEADER)
        signature_text = headers.get(SIGNATURE_HEADER)
        if not (isinstance(caller, str) and isinstance(stamp, str) and signature_text):
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED,
                f"only central bank nodes may call this; send {CALLER_HEADER}, {TIME_HEADER} "
                f"and {SIGNATURE_HEADER} signed with the central bank's key",
            )
        key = self.keys.get(caller)
        if key is None:
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED, f"{caller!r} is not a central bank of this network"
            )
        try:
            time_ms = int(stamp)
            signature = base64.b64decode(str(signature_text), validate=True)
        except (ValueError, binascii.Error):
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED, "malformed signed-call headers"
            ) from None
        now = self.clock()
        if abs(now - time_ms) > FRESHNESS_MS:
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED,
                f"signed call by {caller} is stale: {TIME_HEADER} {time_ms} is more than "
                f"{FRESHNESS_MS} ms from now ({now})",
            )
        seen = (method, caller, time_ms, str(signature_text))
        if seen in self._verified:
            return caller
        message = caller_message(self.chain_id, self.audience, method, caller, time_ms)
        if not self.verifier.verify(key, message, signature):
            raise Refused(
                Reason.CALLER_NOT_AUTHENTICATED, f"signed call by {caller} does not verify"
            )
        self._remember(seen, now)
        return caller

    def _remember(self, seen: tuple[str, str, int, str], now: int) -> None:
        self._verified[seen] = None
        while len(self._verified) > VERIFIED_KEPT:
            self._verified.popitem(last=False)
        # headers past their window would be refused before the lookup anyway; drop the oldest
        oldest = next(iter(self._verified))
        if abs(now - oldest[2]) > FRESHNESS_MS:
            del self._verified[oldest]


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call of the guarded services that no central bank node made.

    With TLS off the signed headers are checked here, before the handler runs, and a good
    call reaches the service's own handler untouched; with TLS on the certificate is read
    from the call's auth context, once the call has begun.
    """

    def __init__(self, authenticator: CallerAuthenticator, services: Iterable[str]) -> None:
        self.authenticator = authenticator
        self.prefixes = tuple(f"/{service}/" for service in services)
        self._checking: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self.prefixes):
            return handler
        if self.authenticator.tls:
            with INTERCEPT.timed():
                # one checking handler per method (and handler behind it), not one per call
                cached = self._checking.get(method)
                if cached is not None and cached[0] is handler:
                    return cached[1]
                checking = _checked(handler, self._context_check(method))
                self._checking[method] = (handler, checking)
                return checking
        try:
            with AUTH.timed():
                metadata = handler_call_details.invocation_metadata
                self.authenticator.of_metadata(metadata or (), method)
        except Refused as refusal:
            return _refusing(handler, refusal)
        return handler

    def _context_check(self, method: str) -> Callable[[Any], str]:
        authenticator = self.authenticator

        def check(context: Any) -> str:
            return authenticator.of_context(context, method)

        return check


def _refusing(handler: grpc.RpcMethodHandler, refusal: Refused) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers `refusal` without reading the request."""

    def check(context: Any) -> str:
        raise refusal

    return _checked(handler, check)


def _checked(handler: grpc.RpcMethodHandler, check: Callable[[Any], str]) -> grpc.RpcMethodHandler:
    """`handler`, but every call runs `check(context)` first and aborts if it refuses."""

    async def admitted(context: Any) -> bool:
        try:
            check(context)
        except Refused as refusal:
            await context.abort_with_status(rich_status(refusal))
            return False
        return True

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        inner_ss: Any = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            if await admitted(context):
                async for response in inner_ss(requests, context):
                    yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
    if handler.response_streaming:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if await admitted(context):
                async for response in inner_us(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.request_streaming:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            if await admitted(context):
                return await inner_su(requests, context)
            return None

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    inner_uu: Any = handler.unary_unary

    async def unary_unary(request: Any, context: Any) -> Any:
        if await admitted(context):
            return await inner_uu(request, context)
        return None

    return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
