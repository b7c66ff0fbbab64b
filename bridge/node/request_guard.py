"""Bad requests answered at once, in one place: a server interceptor on every node.

gRPC decodes each request with its method handler's `request_deserializer`; left alone, a
message that does not decode (garbage, truncated, invalid UTF-8 in a string, an over-long
varint) escapes as an exception: a unary call answers `UNKNOWN` with a traceback in the log,
and a request stream stops delivering messages, so the call hangs until the client's deadline.

`RequestGuard` swaps in a deserializer that never raises: a message that does not decode, or
whose fields are out of bounds (`bridge.bounds`), becomes an `Undecodable` carrying the
refusal. The wrapped behaviour then answers it:
- a unary request: the call ends `INVALID_ARGUMENT` with a short message and the reason;
- a request stream whose replies carry `correlation_id` and `refusal` (`Submit`,
  `SubmitStream`): that message alone is refused, with the correlation id read from the raw
  bytes, and the stream keeps serving; when even the correlation id cannot be read, the stream
  stops reading, answers what it has taken, and ends `INVALID_ARGUMENT`; a message carrying a
  `batch` of such requests has its bad items refused one by one and the others served; a
  message carrying a batch of `instructions` answered in order (`SubmitStream`) reaches the
  service whole, as a `PartlyRefused` naming the refusal of each bad item by its position, for
  the service to answer in that item's place;
- any other request stream ends `INVALID_ARGUMENT`.
Each bad message is logged once, as one line without a traceback. A message that decoded but
is out of bounds is also handed, with its method and refusal, to `on_refused` when one is given
(a central bank node records the refused instructions among them).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from bridge import wire
from bridge.bounds import FIELD_BOUNDS, check_message
from bridge.errors import Reason, Refused
from bridge.metrics import stage
from bridge.status import abort

__all__ = ["OnRefused", "PartlyRefused", "RequestGuard", "Undecodable", "correlation_id_of"]

log = logging.getLogger("bridge.request_guard")
_BOUNDED_PACKAGE = "bridge.v1."  # the messages `bridge.bounds` knows; health etc. only decode
_END = object()
PARSE = stage("parse")  # protobuf decoding of one request message (gRPC's deserializer)
GUARD = stage("guard")  # checking one decoded request against `bridge.bounds`
INTERCEPT = stage("intercept")  # the interceptors' own work per call


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message that could not be taken: its raw bytes and the refusal to answer."""

    data: bytes
    refusal: Refused


OnRefused = Callable[[str, Message, Refused], None]  # method, decoded message, its refusal


def _deserializer(
    decode: Callable[[bytes], Any], method: str, bounded: bool, on_refused: OnRefused | None
) -> Callable[[bytes], Any]:
    def guarded(data: bytes) -> Any:
        try:
            with PARSE.timed():
                message = decode(data)
        except (DecodeError, UnicodeDecodeError, ValueError, RecursionError):
            return _refused(
                data, method, Refused(Reason.MALFORMED, "the request message does not decode")
            )
        if bounded:
            try:
                with GUARD.timed():
                    check_message(message)
            except Refused as refusal:
                sifted = _sifted(message, data, method) or _screened(message, data, method)
                if sifted is not None:  # a batch with its bad items taken out or named
                    return sifted
                if on_refused is not None:
                    try:
                        on_refused(method, message, refusal)
                    except Exception:  # the refusal is answered whatever the hook does
                        log.exception("on_refused failed", extra={"method": method})
                return _refused(data, method, refusal)
        return message

    return guarded


@dataclass(frozen=True, slots=True)
class Sifted:
    """A batch request (`batch` of items with their own correlation ids) whose bad items were
    taken out: `message` holds the others, `refused` answers each bad one by its own id."""

    message: Message
    refused: tuple[tuple[int, Refused], ...]


def _sifted(message: Message, data: bytes, method: str) -> Sifted | None:
    """The batch without its out-of-bounds items, or None when the message itself (not only
    some items) is out of bounds, or carries no batch."""
    batch = getattr(message, "batch", None)
    if not batch or "correlation_id" not in message.DESCRIPTOR.fields_by_name:
        return None
    kept: list[Message] = []
    refused: list[tuple[int, Refused]] = []
    for item in batch:
        try:
            check_message(item)
        except Refused as refusal:
            _refused(data, method, refusal)
            refused.append((item.correlation_id, refusal))
        else:
            kept.append(item)
    del batch[:]
    batch.extend(kept)
    try:
        check_message(message)
    except Refused:
        return None
    return Sifted(message, tuple(refused))


@dataclass(frozen=True, slots=True)
class PartlyRefused:
    """A request with a batch of `instructions` answered in order (`SubmitStream`), some of
    them out of bounds: `message` is the whole request, `refused` the refusal of each bad
    instruction by its position in the batch; the service answers those in their places."""

    message: Message
    refused: dict[int, Refused]


def _screened(message: Message, data: bytes, method: str) -> PartlyRefused | None:
    """The request with its out-of-bounds instructions named by position, or None when the
    message itself (its batch's length, another field) is out of bounds, or is no such batch."""
    fields = message.DESCRIPTOR.fields_by_name
    if "correlation_id" not in fields or "instructions" not in fields:
        return None
    instructions = getattr(message, "instructions", ())
    refused: dict[int, Refused] = {}
    shell = type(message)()
    shell.CopyFrom(message)
    shell.ClearField("instructions")  # the message without its items, checked on its own
    try:
        check_message(shell)
        if len(instructions) > FIELD_BOUNDS["instructions"].max_length:
            return None
    except Refused:
        return None
    for index, item in enumerate(instructions):
        try:
            check_message(item, f"instructions[{index}].")
        except Refused as refusal:
            _refused(data, method, refusal)
            refused[index] = refusal
    return PartlyRefused(message, refused) if refused else None


def _refused(data: bytes, method: str, refusal: Refused) -> Undecodable:
    log.warning(
        "request refused at the edge",
        extra={"method": method, "reason": refusal.reason.value, "bytes": len(data)},
    )
    return Undecodable(data, refusal)


# ---------------------------------------------------------------------------- raw bytes


def correlation_id_of(data: bytes) -> int | None:
    """Field 1 of a message as a varint, read leniently from raw bytes (None: not readable)."""
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if number == 1 and wire_type == 0:
                value, _ = _varint(data, position)
                return value
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type == 1:
                position += 8
            elif wire_type == 2:
                length, position = _varint(data, position)
                position += length
            elif wire_type == 5:
                position += 4
            else:
                return None
    except IndexError:
        return None
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]  # IndexError past the end
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise IndexError("varint past 64 bits")
            return value, position
        shift += 7
        if shift >= 70:
            raise IndexError("varint longer than 10 bytes")


# ---------------------------------------------------------------------------- behaviours


def _reply_factory(method: str) -> Callable[[int, Refused], Message] | None:
    """How to refuse one message of a request stream in its reply stream (None: cannot)."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return None
    output = found.output_type
    if "correlation_id" not in output.fields_by_name or "refusal" not in output.fields_by_name:
        return None
    reply_class = message_factory.GetMessageClass(output)

    def reply(correlation_id: int, refusal: Refused) -> Message:
        message: Message = reply_class(
            correlation_id=correlation_id, refusal=wire.refusal_to_proto(refusal)
        )
        return message

    return reply


def _unary_request(behaviour: Any, response_streaming: bool) -> Any:
    if response_streaming and inspect.isasyncgenfunction(behaviour):

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if type(request) is Undecodable:
                await abort(context, request.refusal)
            async for response in behaviour(request, context):
                yield response

        return unary_stream

    async def unary(request: Any, context: Any) -> Any:
        if type(request) is Undecodable:
            await abort(context, request.refusal)
        return await behaviour(request, context)

    return unary


async def _refusing_iterator(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if type(request) is Undecodable:
            await abort(context, request.refusal)
        if type(request) is Sifted:  # a stream with no refusal per item refuses the message
            await abort(context, request.refused[0][1])
        if type(request) is PartlyRefused:
            await abort(context, next(iter(request.refused.values())))
        yield request


def _stream_request(
    behaviour: Any, response_streaming: bool, reply: Callable[[int, Refused], Message] | None
) -> Any:
    if not (response_streaming and inspect.isasyncgenfunction(behaviour)):

        async def refusing(requests: AsyncIterator[Any], context: Any) -> Any:
            return await behaviour(_refusing_iterator(requests, context), context)

        return refusing
    if reply is None:

        async def stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for response in behaviour(_refusing_iterator(requests, context), context):
                yield response

        return stream
    return _answering_stream(behaviour, reply)


ANSWERS_AHEAD = 64  # answers of one request stream waiting for the transport, at most


def _answering_stream(behaviour: Any, reply: Callable[[int, Refused], Message]) -> Any:
    """A request stream whose bad messages are refused one by one, in the reply stream.

    Answers wait in a bounded queue (`ANSWERS_AHEAD`) for the transport to take them: a caller
    that stops reading stops the handler from reading further requests (flow control reaches
    the caller), rather than having the node work through everything it sends and hold every
    answer in memory."""

    async def stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=ANSWERS_AHEAD)
        fatal: list[Refused] = []

        async def taken() -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is Sifted:  # a batch's bad items: each its own refusal
                    for item_id, refusal in request.refused:
                        await out.put(reply(item_id, refusal))
                    yield request.message
                    continue
                if type(request) is not Undecodable:
                    yield request
                    continue
                correlation_id = correlation_id_of(request.data)
                if correlation_id is None:  # nothing to answer it by: end the stream
                    fatal.append(request.refusal)
                    return
                await out.put(reply(correlation_id, request.refusal))

        async def pump() -> None:
            try:
                async for response in behaviour(taken(), context):
                    await out.put(response)
            except asyncio.CancelledError:
                # the reply stream is over (the caller went): nobody reads `out` any more, and
                # waiting to put the end on a full queue would leave this task pending for good
                raise
            except BaseException:
                await out.put(_END)  # the reply stream ends, then raises this (`await task`)
                raise
            await out.put(_END)

        task = asyncio.create_task(pump())
        try:
            while (response := await out.get()) is not _END:
                yield response
            await task
        finally:
            task.cancel()
        if fatal:
            refusal = fatal[0]
            await abort(
                context,
                Refused(refusal.reason, f"{refusal.message}; its correlation id is unreadable"),
            )

    return stream


# ---------------------------------------------------------------------------- interceptor


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers undecodable and out-of-bounds requests at once, on every method of a server."""

    def __init__(self, on_refused: OnRefused | None = None) -> None:
        self.on_refused = on_refused
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        with INTERCEPT.timed():
            if handler is None or handler.request_deserializer is None:
                return handler
            method: str = handler_call_details.method
            cached = self._wrapped.get(method)
            if cached is not None and cached[0] is handler:
                return cached[1]
            wrapped = _guarded(handler, method, self.on_refused)
            self._wrapped[method] = (handler, wrapped)
            return wrapped


def _guarded(
    handler: grpc.RpcMethodHandler, method: str, on_refused: OnRefused | None
) -> grpc.RpcMethodHandler:
    bounded = method.lstrip("/").startswith(_BOUNDED_PACKAGE)
    decode = _deserializer(handler.request_deserializer, method, bounded, on_refused)
    encode = handler.response_serializer
    streaming = handler.response_streaming
    if not handler.request_streaming:
        if streaming:
            return grpc.unary_stream_rpc_method_handler(
                _unary_request(handler.unary_stream, True),
                request_deserializer=decode,
                response_serializer=encode,
            )
        return grpc.unary_unary_rpc_method_handler(
            _unary_request(handler.unary_unary, False),
            request_deserializer=decode,
            response_serializer=encode,
        )
    if streaming:
        return grpc.stream_stream_rpc_method_handler(
            _stream_request(handler.stream_stream, True, _reply_factory(method)),
            request_deserializer=decode,
            response_serializer=encode,
        )
    return grpc.stream_unary_rpc_method_handler(
        _stream_request(handler.stream_unary, False, None),
        request_deserializer=decode,
        response_serializer=encode,
    )
