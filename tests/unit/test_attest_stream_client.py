"""A central bank node's attestation stream: an attestation the bridge answers it could not
store is sent again on a new call (which may reach the bridge process leading now)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.log.blocks import Attestation
from participants.central_bank.node import attest_heights


class Replica:
    """A replica whose head is height 5, once; nothing newer ever comes."""

    async def wait_beyond(self, height: int) -> None:
        if height >= 5:
            await asyncio.Event().wait()

    def attest_head(self) -> Attestation:
        return Attestation(5, b"\x05" * 32, "PBOC", b"\x01" * 64)


class Call:
    def __init__(self, answer: bridge_pb.AttestStreamResponse) -> None:
        self.answer = answer
        self.sent: list[types.Attestation] = []
        self.cancelled = False

    async def write(self, message: types.Attestation) -> None:
        self.sent.append(message)

    async def read(self) -> bridge_pb.AttestStreamResponse:
        return self.answer

    def cancel(self) -> None:
        self.cancelled = True


async def test_an_attestation_not_stored_is_sent_again_on_a_new_call() -> None:
    """UNAVAILABLE in the stream (not stored): the call is dropped and the same height is
    attested again on a new one, which takes it; then the node waits for a newer head."""
    not_stored = bridge_pb.AttestStreamResponse(
        refusal=types.Refusal(
            code=grpc.StatusCode.UNAVAILABLE.name, reason="UNAVAILABLE", message="not stored"
        )
    )
    accepted = bridge_pb.AttestStreamResponse(
        accepted=bridge_pb.SubmitAttestationResponse(final_height=5)
    )
    calls = [Call(not_stored), Call(accepted)]
    opened: list[Call] = []

    def open_stream() -> Call:
        call = calls[len(opened)]
        opened.append(call)
        return call

    reachability = SimpleNamespace(succeeded=lambda started: None, failed=lambda error: False)
    core: Any = SimpleNamespace(
        replica=Replica(),
        link=SimpleNamespace(reachability=reachability),
        bridge=SimpleNamespace(AttestStream=open_stream),
    )
    task = asyncio.create_task(attest_heights(core, 0.01))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if len(opened) == 2 and opened[1].sent:
            break
    await asyncio.sleep(0.1)
    task.cancel()
    assert len(opened) == 2, "the attestation was not sent again on a new call"
    assert opened[0].cancelled
    assert [m.height for m in opened[0].sent] == [5]
    assert [m.height for m in opened[1].sent] == [5]  # taken: nothing more is sent
