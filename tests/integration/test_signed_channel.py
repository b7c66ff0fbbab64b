"""Signed calls without client interceptors (`SignedChannel`), and the order of a node's edge,
on a real gRPC server on loopback.

The server runs the bridge's edge (the interceptors `InFlightLimit`, `CallerAuthInterceptor`,
`RequestGuard`, in that order) in front of a BridgeLedger servicer that records what reaches
it; requests go in as raw bytes through a generic channel, or through a `SignedChannel` as a
central bank node sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as pb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import FIELD_BOUNDS
from bridge.crypto import FastVerifier, PrivateKey
from bridge.errors import Reason
from bridge.node.caller_auth import (
    BRIDGE_AUDIENCE,
    CALLER_HEADER,
    CallerAuthenticator,
    CallerAuthInterceptor,
    CallerSigner,
    SignedChannel,
)
from bridge.node.request_guard import RequestGuard
from bridge.node.shedding import InFlightLimit
from bridge.status import refusal_from_rpc_error

CHAIN = "edge-test-chain"
SERVICE = "bridge.v1.BridgeLedger"
GET_PARTICIPANT = f"/{SERVICE}/GetParticipant"
TIMEOUT = 10.0


@dataclass
class Recorder(pb_grpc.BridgeLedgerServicer):
    """Answers GetParticipant (held while `hold` is clear), StreamBlocks and Submit, keeping
    what reached it."""

    hold: asyncio.Event = field(default_factory=asyncio.Event)
    participants: list[str] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def _saw(self, context: Any) -> None:
        headers = dict(context.invocation_metadata() or ())
        self.callers.append(str(headers.get(CALLER_HEADER, "")))
        self.extra.append(str(headers.get("x-test-extra", "")))

    async def GetParticipant(  # noqa: N802  # the generated servicer's method name
        self, request: pb.GetParticipantRequest, context: Any
    ) -> pb.GetParticipantResponse:
        self._saw(context)
        self.participants.append(request.participant)
        await self.hold.wait()
        response = pb.GetParticipantResponse()
        response.participant.id = request.participant
        return response

    async def StreamBlocks(  # noqa: N802  # the generated servicer's method name
        self, request: pb.StreamBlocksRequest, context: Any
    ) -> AsyncIterator[types.Block]:
        self._saw(context)
        for height in range(request.from_height, request.from_height + 3):
            block = types.Block()
            block.header.height = height
            yield block

    async def Submit(  # noqa: N802  # the generated servicer's method name
        self, requests: AsyncIterator[pb.SubmitRequest], context: Any
    ) -> AsyncIterator[pb.SubmitResponse]:
        self._saw(context)
        async for request in requests:
            yield pb.SubmitResponse(correlation_id=request.correlation_id)


@dataclass
class Served:
    port: int
    recorder: Recorder
    limit: InFlightLimit
    key: PrivateKey  # PBOC's, the central bank the server trusts

    def signed(self, key: PrivateKey | None = None, caller: str = "PBOC") -> SignedChannel:
        signer = CallerSigner(
            chain_id=CHAIN, caller=caller, audience=BRIDGE_AUDIENCE, signer=key or self.key
        )
        return SignedChannel(grpc.aio.insecure_channel(f"127.0.0.1:{self.port}"), signer)

    def plain(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    key = PrivateKey.generate()
    authenticator = CallerAuthenticator(
        central_bank_keys={"PBOC": key.public_key},
        chain_id=CHAIN,
        audience=BRIDGE_AUDIENCE,
        tls=False,
        verifier=FastVerifier(),
    )
    limit = InFlightLimit(1, retry_after=0.25)
    callers = CallerAuthInterceptor(authenticator, [SERVICE])
    server = grpc.aio.server(interceptors=[limit, callers, RequestGuard()])
    recorder = Recorder()  # type: ignore[abstract]  # the other methods: UNIMPLEMENTED
    pb_grpc.add_BridgeLedgerServicer_to_server(recorder, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield Served(port, recorder, limit, key)
    finally:
        recorder.hold.set()
        await server.stop(None)


async def refused_raw(
    channel: grpc.aio.Channel, data: bytes, metadata: Any = None
) -> grpc.aio.AioRpcError:
    call = channel.unary_unary(GET_PARTICIPANT, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(data, metadata=metadata, timeout=TIMEOUT)
    return info.value


def signed_headers(served: Served, method: str = GET_PARTICIPANT) -> tuple[tuple[str, str], ...]:
    signer = CallerSigner(
        chain_id=CHAIN, caller="PBOC", audience=BRIDGE_AUDIENCE, signer=served.key
    )
    return signer.headers(method)


async def test_an_unsigned_raw_call_is_unauthenticated_before_its_bytes_are_read(
    served: Served,
) -> None:
    """Undecodable bytes from an anonymous caller are refused for the caller (UNAUTHENTICATED,
    CALLER_NOT_AUTHENTICATED), not for the bytes, and never reach the service."""
    async with served.plain() as channel:
        error = await refused_raw(channel, b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refusal_from_rpc_error(error).reason is Reason.CALLER_NOT_AUTHENTICATED
    assert served.recorder.participants == []


async def test_a_signed_raw_call_out_of_bounds_is_refused_by_the_guard(served: Served) -> None:
    """A signed caller's request with an over-long field is INVALID_ARGUMENT / FIELD_TOO_LONG,
    and one that does not decode INVALID_ARGUMENT / MALFORMED; neither reaches the service."""
    too_long = "X" * (FIELD_BOUNDS["participant"].max_length + 1)
    data = pb.GetParticipantRequest(participant=too_long).SerializeToString()
    async with served.plain() as channel:
        error = await refused_raw(channel, data, signed_headers(served))
        garbage = await refused_raw(channel, b"\x0a\xff", signed_headers(served))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal_from_rpc_error(error).reason is Reason.FIELD_TOO_LONG
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal_from_rpc_error(garbage).reason is Reason.MALFORMED
    assert served.recorder.participants == []


async def test_a_call_past_the_bound_is_shed_before_its_caller_is_checked(
    served: Served,
) -> None:
    """With the one call the bound allows held in flight, a second, even anonymous, is shed at
    once (RESOURCE_EXHAUSTED, OVERLOADED) and never reaches the service; once the first is
    answered, calls get in again."""
    async with served.signed() as signed, served.plain() as plain:
        stub = pb_grpc.BridgeLedgerStub(signed)
        first = asyncio.ensure_future(
            stub.GetParticipant(pb.GetParticipantRequest(participant="ICBC"), timeout=TIMEOUT)
        )
        while served.limit.in_flight < 1:
            await asyncio.sleep(0.01)
        error = await refused_raw(plain, b"\xff\xff\xff")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal_from_rpc_error(error).reason is Reason.OVERLOADED
        assert served.recorder.participants == ["ICBC"]
        served.recorder.hold.set()
        assert (await first).participant.id == "ICBC"
        again = await stub.GetParticipant(
            pb.GetParticipantRequest(participant="HSBCHK"), timeout=TIMEOUT
        )
    assert again.participant.id == "HSBCHK"
    assert served.limit.in_flight == 0


async def test_health_stays_open_through_the_edge(served: Served) -> None:
    """An anonymous health check passes the edge (no caller check, never shed)."""
    async with served.plain() as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_signed_channel_signs_unary_and_streaming_calls(served: Served) -> None:
    """Through a SignedChannel a unary call, a response stream and a bidirectional stream are
    admitted as the central bank's, and metadata the caller adds is kept beside the headers."""
    served.recorder.hold.set()
    async with served.signed() as channel:
        stub = pb_grpc.BridgeLedgerStub(channel)
        answer = await stub.GetParticipant(
            pb.GetParticipantRequest(participant="ICBC"),
            metadata=(("x-test-extra", "kept"),),
            timeout=TIMEOUT,
        )
        heights = [
            block.header.height
            async for block in stub.StreamBlocks(pb.StreamBlocksRequest(from_height=5))
        ]
        submit = stub.Submit(iter([pb.SubmitRequest(correlation_id=n) for n in (7, 8, 9)]))
        answered = [response.correlation_id async for response in submit]
    assert answer.participant.id == "ICBC"
    assert heights == [5, 6, 7]
    assert answered == [7, 8, 9]
    assert served.recorder.callers == ["PBOC", "PBOC", "PBOC"]
    assert served.recorder.extra == ["kept", "", ""]


async def test_a_signed_channel_with_another_key_is_unauthenticated(served: Served) -> None:
    """A SignedChannel naming PBOC but signing with another key is refused on a unary call
    and on a stream (UNAUTHENTICATED, CALLER_NOT_AUTHENTICATED); nothing reaches the service."""
    async with served.signed(PrivateKey.generate()) as channel:
        stub = pb_grpc.BridgeLedgerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.GetParticipant(pb.GetParticipantRequest(participant="X"), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in stub.StreamBlocks(pb.StreamBlocksRequest(from_height=1)):
                pass
    for error in (unary.value, stream.value):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refusal_from_rpc_error(error).reason is Reason.CALLER_NOT_AUTHENTICATED
    assert served.recorder.participants == []
    assert served.recorder.callers == []
