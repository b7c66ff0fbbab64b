"""Bad input answered at once, as an outsider sends it: raw bytes over a generic gRPC channel.

Every RPC of every service of every node (bridge, four central banks; health and reflection
too) gets undecodable bytes and must answer INVALID_ARGUMENT with a short message, logging no
traceback. Request streams answer a bad message and keep serving the good ones around it.
Oversized fields, bad page sizes and times are refused at the edge with their reasons, and
nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Envelope, Pay
from bridge.errors import Reason
from bridge.signing import endorse_legs, sign_as_party
from participants.central_bank.channels import bridge_channel
from tests.conftest import RPC_TIMEOUT, VALID_FOR_MS, new_id, now_ms, reason_of, refusal_of

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

SHORT_MESSAGE = 200  # characters: what "a short message" means here
CENTRAL_BANK_SERVICE = cb_pb.DESCRIPTOR.services_by_name["CentralBank"]
ADMIN_SERVICE = cb_pb.DESCRIPTOR.services_by_name["CentralBankAdmin"]
COMMON_SERVICES = [
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
BRIDGE_SERVICES = [bridge_pb.DESCRIPTOR.services_by_name["BridgeLedger"]]
Headers = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """Balances for the payments the stream tests settle."""
    live.issue("ICBC", 10_000_000)


# ---------------------------------------------------------------------------- raw payloads


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bad_utf8(descriptor: Descriptor, depth: int = 0) -> bytes | None:
    """An encoding of `descriptor` with invalid UTF-8 in its first reachable string field."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _key(field.number, 2) + b"\x02\xc3\x28"
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 4:
            inner = _bad_utf8(field.message_type, depth + 1)
            if inner is not None:
                return _key(field.number, 2) + _varint(len(inner)) + inner
    return None


def payloads(method: MethodDescriptor) -> dict[str, bytes]:
    """Undecodable bytes for the method's request: garbage, truncated, bad UTF-8, long varint."""
    found = {
        "garbage": b"\xff\xff\xff\xff\xff",
        "truncated": _key(1, 2) + b"\x0a\x01\x02",
        "overlong varint": _key(1, 0) + b"\xff" * 10 + b"\x01",
    }
    bad = _bad_utf8(method.input_type)
    if bad is not None:
        found["invalid UTF-8"] = bad
    return found


def call_raw(
    channel: grpc.Channel, method: MethodDescriptor, data: bytes, metadata: Headers = ()
) -> grpc.RpcError:
    """Send `data` as the request of `method`; return the error it must end with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming:
        stream = channel.stream_stream(path)
        replies = stream(iter([data]), metadata=metadata, timeout=RPC_TIMEOUT)
        return refusal_of(lambda: list(replies))
    if method.server_streaming:
        replies = channel.unary_stream(path)(data, timeout=RPC_TIMEOUT)
        return refusal_of(lambda: next(iter(replies)))
    return refusal_of(lambda: channel.unary_unary(path)(data, timeout=RPC_TIMEOUT))


@pytest.fixture(scope="module")
def bridge_as_pboc(live: LiveNetwork) -> Iterator[grpc.Channel]:
    """A channel to the bridge that signs its calls as PBOC's node (raw bytes still)."""
    channel = bridge_channel(live.config, "PBOC")
    yield channel
    channel.close()


def listeners(
    live: LiveNetwork, bridge: grpc.Channel
) -> Iterator[tuple[str, grpc.Channel, list[ServiceDescriptor]]]:
    """Every listener of every node, with the services it serves (health and reflection too)."""
    yield "bridge", bridge, [*BRIDGE_SERVICES, *COMMON_SERVICES]
    for cb in live.central_bank_ids:
        yield cb, live.channel(live.address(cb)), [CENTRAL_BANK_SERVICE, *COMMON_SERVICES]
        admin = live.channel(live.admin_address(cb))
        yield f"{cb} admin", admin, [ADMIN_SERVICE, *COMMON_SERVICES]


def peer_headers(live: LiveNetwork, node: str, method: MethodDescriptor) -> Headers:
    """A peer node's signed headers for a stream that refuses anyone else before it reads a
    message (EndorseStream); none for every other method."""
    if method.full_name != "bridge.v1.CentralBank.EndorseStream":
        return ()
    peer = next(cb for cb in live.central_bank_ids if cb != node)
    return live.signed_call(peer, node, f"/{method.containing_service.full_name}/{method.name}")


def log_tail(directory: Path) -> Callable[[], str]:
    """What the nodes log from now on (read when called)."""
    sizes = {path: path.stat().st_size for path in (directory / "logs").glob("*.log")}

    def read() -> str:
        out = []
        for path, size in sizes.items():
            with path.open("rb") as handle:
                handle.seek(size)
                out.append(handle.read().decode(errors="replace"))
        return "".join(out)

    return read


# ---------------------------------------------------------------------------- undecodable bytes


def test_undecodable_requests_answer_invalid_argument_on_every_rpc(
    live: LiveNetwork, bridge_as_pboc: grpc.Channel
) -> None:
    """Garbage, truncated, invalid-UTF-8 and over-long-varint requests: INVALID_ARGUMENT, short."""
    logged = log_tail(live.directory)
    failures = []
    calls = 0
    for node, channel, services in listeners(live, bridge_as_pboc):
        for method in (m for service in services for m in service.methods):
            for what, data in payloads(method).items():
                calls += 1
                error = call_raw(channel, method, data, peer_headers(live, node, method))
                details = error.details() or ""
                if (
                    error.code() is not grpc.StatusCode.INVALID_ARGUMENT
                    or len(details) > SHORT_MESSAGE
                ):
                    failures.append(f"{node} {method.full_name} {what}: {error.code().name}")
    assert not failures, "\n".join(failures[:20])
    assert calls > 400
    text = logged()
    assert "Traceback" not in text
    assert text.count("request refused at the edge") == calls


def test_undecodable_request_carries_the_malformed_reason(live: LiveNetwork) -> None:
    """A refused undecodable request carries Reason.MALFORMED and says it does not decode."""
    channel = live.channel(live.address("PBOC"))
    error = refusal_of(
        lambda: channel.unary_unary("/bridge.v1.CentralBank/Pay")(b"\xff\xff", timeout=RPC_TIMEOUT)
    )
    assert reason_of(error) is Reason.MALFORMED
    assert "does not decode" in (error.details() or "")


# ---------------------------------------------------------------------------- request streams


def _pay(live: LiveNetwork, instruction_id: str) -> types.SignedInstruction:
    body = Pay(
        instruction_id,
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "BOCQ",
        "CNY",
        100,
        "INV-1",
        signed_at=now_ms(),
    )
    return live.signed(body)


def _corrupted(encoded: bytes, marker: bytes) -> bytes:
    """The encoding with `marker` overwritten by invalid UTF-8 of the same length."""
    assert encoded.count(marker) == 1
    return encoded.replace(marker, b"\xff" * len(marker))


def test_submit_stream_answers_a_bad_message_and_serves_the_rest(live: LiveNetwork) -> None:
    """SubmitStream: valid, invalid UTF-8, valid; the bad one is refused, both others settle."""
    first, bad_id, last = new_id("good"), new_id("bad"), new_id("good")
    requests = [
        cb_pb.BankSubmitRequest(
            correlation_id=1, instruction=_pay(live, first)
        ).SerializeToString(),
        _corrupted(
            cb_pb.BankSubmitRequest(
                correlation_id=2, instruction=_pay(live, bad_id)
            ).SerializeToString(),
            bad_id.encode(),
        ),
        cb_pb.BankSubmitRequest(correlation_id=3, instruction=_pay(live, last)).SerializeToString(),
    ]
    stream = live.channel(live.address("PBOC")).stream_stream(
        "/bridge.v1.CentralBank/SubmitStream",
        response_deserializer=cb_pb.BankSubmitResponse.FromString,
    )
    replies = {r.correlation_id: r for r in stream(iter(requests), timeout=RPC_TIMEOUT)}
    assert sorted(replies) == [1, 2, 3]
    assert replies[2].refusal.code == "INVALID_ARGUMENT"
    assert replies[2].refusal.reason == Reason.MALFORMED.value
    for good in (1, 3):
        assert replies[good].status.receipt.outcome == types.OUTCOME_SETTLED, replies[good]
    assert live.entries_of_instruction("ICBC", first) == 1
    assert live.entries_of_instruction("ICBC", last) == 1


def test_bridge_submit_answers_a_bad_message_and_serves_the_rest(
    live: LiveNetwork, bridge_as_pboc: grpc.Channel
) -> None:
    """BridgeLedger.Submit: valid, invalid UTF-8, valid; the bad one refused, both others land."""
    first, bad_id, last = new_id("good"), new_id("bad"), new_id("good")

    def endorsed(instruction_id: str) -> types.SignedInstruction:
        body = Pay(
            instruction_id,
            "ICBC",
            now_ms() + VALID_FOR_MS,
            "BOCQ",
            "CNY",
            100,
            "",
            signed_at=now_ms(),
        )
        return live.endorsed(body)

    requests = [
        bridge_pb.SubmitRequest(correlation_id=7, instruction=endorsed(first)).SerializeToString(),
        _corrupted(
            bridge_pb.SubmitRequest(
                correlation_id=8, instruction=endorsed(bad_id)
            ).SerializeToString(),
            bad_id.encode(),
        ),
        bridge_pb.SubmitRequest(correlation_id=9, instruction=endorsed(last)).SerializeToString(),
    ]
    stream = bridge_as_pboc.stream_stream(
        "/bridge.v1.BridgeLedger/Submit", response_deserializer=bridge_pb.SubmitResponse.FromString
    )
    replies = {r.correlation_id: r for r in stream(iter(requests), timeout=RPC_TIMEOUT)}
    assert sorted(replies) == [7, 8, 9]
    assert replies[8].refusal.code == "INVALID_ARGUMENT"
    for good in (7, 9):
        assert replies[good].receipt.outcome == types.OUTCOME_SETTLED, replies[good]
    assert live.entries_of_instruction("ICBC", last) == 1


def test_a_batch_on_bridge_submit_answers_each_instruction_alone(
    live: LiveNetwork, bridge_as_pboc: grpc.Channel
) -> None:
    """BridgeLedger.Submit, one message of five instructions endorsed under one root: a path
    of another batch, a root signed by the wrong node's key and a field out of bounds are
    each refused alone; the two others settle; answers come batched, each once."""
    ids = [new_id("batch") for _ in range(5)]
    signed = [
        sign_as_party(
            Envelope.of(
                Pay(
                    iid,
                    "ICBC",
                    now_ms() + VALID_FOR_MS,
                    "BOCQ",
                    "CNY",
                    100,
                    "x" * 141 if index == 3 else "",
                    signed_at=now_ms(),
                )
            ),
            "ICBC",
            live.key("ICBC"),
        )
        for index, iid in enumerate(ids)
    ]
    ours = endorse_legs([(e, "ICBC") for e in signed], "PBOC", live.key("PBOC"))
    other = endorse_legs([(e, "ICBC") for e in signed[:2]], "PBOC", live.key("PBOC"))
    forged = endorse_legs([(e, "ICBC") for e in signed], "PBOC", live.key("HKMA"))
    endorsements = [ours[0], other[1], forged[2], ours[3], ours[4]]
    # our batch's signature with the place (size, path) of the leg in another batch
    endorsements[1] = replace(ours[1], size=other[1].size, path=other[1].path)
    batch = [
        bridge_pb.SubmitRequest(
            correlation_id=100 + index,
            instruction=wire.envelope_to_proto(envelope.with_signature(endorsement)),
        )
        for index, (envelope, endorsement) in enumerate(zip(signed, endorsements, strict=True))
    ]
    stream = bridge_as_pboc.stream_stream(
        "/bridge.v1.BridgeLedger/Submit", request_serializer=None, response_deserializer=None
    )
    message = bridge_pb.SubmitRequest(batch=batch).SerializeToString()
    replies: dict[int, bridge_pb.SubmitResponse] = {}
    for raw in stream(iter([message]), timeout=RPC_TIMEOUT):
        reply = bridge_pb.SubmitResponse.FromString(raw)
        for answer in reply.batch or (reply,):
            assert answer.correlation_id not in replies, "answered twice"
            replies[answer.correlation_id] = answer
    assert sorted(replies) == [100, 101, 102, 103, 104]
    for good in (100, 104):
        assert replies[good].receipt.outcome == types.OUTCOME_SETTLED, replies[good]
    assert replies[101].refusal.reason == Reason.BAD_SIGNATURE.value
    assert replies[102].refusal.reason == Reason.BAD_SIGNATURE.value
    assert replies[103].refusal.reason == Reason.FIELD_TOO_LONG.value
    assert [live.entries_of_instruction("ICBC", iid) for iid in ids] == [1, 0, 0, 0, 1]


def test_stream_message_without_readable_correlation_id_ends_the_stream(
    live: LiveNetwork,
) -> None:
    """A stream message whose correlation id cannot be read: earlier ones answered, then
    the stream ends INVALID_ARGUMENT."""
    first = new_id("good")
    requests = [
        cb_pb.BankSubmitRequest(
            correlation_id=1, instruction=_pay(live, first)
        ).SerializeToString(),
        b"\xff\xff\xff\xff",
    ]
    stream = live.channel(live.address("PBOC")).stream_stream(
        "/bridge.v1.CentralBank/SubmitStream",
        response_deserializer=cb_pb.BankSubmitResponse.FromString,
    )
    replies = stream(iter(requests), timeout=RPC_TIMEOUT)
    received = []
    with pytest.raises(grpc.RpcError) as info:
        received.extend(replies)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [r.correlation_id for r in received] == [1]
    assert live.entries_of_instruction("ICBC", first) == 1


# ---------------------------------------------------------------------------- field bounds


FIVE_MIB = 5 * 1024 * 1024


def _short_invalid(error: grpc.RpcError, reason: Reason) -> None:
    details = error.details() or ""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), details[:200])
    assert reason_of(error) is reason, details[:200]
    assert len(details) <= SHORT_MESSAGE, len(details)


def test_five_mib_instruction_id_is_refused_with_a_short_message(live: LiveNetwork) -> None:
    """A 5 MiB instruction id: INVALID_ARGUMENT FIELD_TOO_LONG quoting a short prefix only."""
    signed = _pay(live, new_id("pay"))
    signed.instruction.instruction_id = "A" * FIVE_MIB
    error = live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(signed, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.FIELD_TOO_LONG,
    )
    _short_invalid(error, Reason.FIELD_TOO_LONG)
    assert "'AAAAAAAAAAAAAAAA'…" in (error.details() or "")


def test_five_mib_ids_in_queries_are_refused_on_both_nodes(live: LiveNetwork) -> None:
    """A 5 MiB id in a query: FIELD_TOO_LONG on the bridge and on a central bank (not relayed)."""
    huge = "x" * FIVE_MIB
    query = live.query(
        "GetInstructionStatus", cb_pb.InstructionStatusQuery(instruction_id=huge), "ICBC"
    )
    error = refusal_of(lambda: live.node("PBOC").GetInstructionStatus(query, timeout=RPC_TIMEOUT))
    _short_invalid(error, Reason.FIELD_TOO_LONG)
    receipt = bridge_pb.GetReceiptRequest(sender="ICBC", instruction_id=huge)
    error = refusal_of(lambda: live.bridge.GetReceipt(receipt, timeout=RPC_TIMEOUT))
    _short_invalid(error, Reason.FIELD_TOO_LONG)
    pvp = bridge_pb.GetPvpRequest(proposer="ICBC", pvp_id="bad id\n" * 2)
    error = refusal_of(lambda: live.bridge.GetPvp(pvp, timeout=RPC_TIMEOUT))
    _short_invalid(error, Reason.MALFORMED)


def test_oversized_reference_is_refused(live: LiveNetwork) -> None:
    """A 141-character reference is FIELD_TOO_LONG at the edge; nothing settles."""
    body = Pay(
        new_id("pay"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "BOCQ",
        "CNY",
        100,
        "R" * 140,
        signed_at=now_ms(),
    )
    signed = live.signed(body)
    signed.instruction.pay.reference = "R" * 141
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(signed, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.FIELD_TOO_LONG,
    )


@pytest.mark.parametrize("limit", [-1, -2, 501, 2**31 - 1])
def test_history_page_size_out_of_range_is_bad_page_size(live: LiveNetwork, limit: int) -> None:
    """GetHistory with limit < 0 or above the 500 cap: INVALID_ARGUMENT BAD_PAGE_SIZE."""
    query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=1, limit=limit), "ICBC")
    error = refusal_of(lambda: live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT))
    _short_invalid(error, Reason.BAD_PAGE_SIZE)
    assert str(limit) in (error.details() or "")


def test_history_page_size_zero_and_cap_are_served(live: LiveNetwork) -> None:
    """GetHistory limit 0 means the default page (100); 500 is the largest page served."""
    for limit in (0, 1, 500):
        query = live.query("GetHistory", cb_pb.HistoryQuery(from_seq=1, limit=limit), "ICBC")
        page = live.node("PBOC").GetHistory(query, timeout=RPC_TIMEOUT)
        assert len(page.entries) <= (limit or 100)
        assert page.entries


@pytest.mark.parametrize("valid_until", [-1, -(2**63), 0])
def test_non_positive_valid_until_is_invalid_time(live: LiveNetwork, valid_until: int) -> None:
    """A negative or zero valid_until is INVALID_TIME (not an amount overflow)."""
    signed = _pay(live, new_id("pay"))
    signed.instruction.valid_until = valid_until
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").Pay(signed, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_TIME,
    )


def test_negative_valid_until_of_issuance_request_is_invalid_time(live: LiveNetwork) -> None:
    """RequestIssuance with a negative valid_until: INVALID_TIME."""
    request = live.query(
        "RequestIssuance",
        cb_pb.IssuanceRequest(request_id=new_id("r"), valid_until=-5, amount=100),
        "ICBC",
    )
    live.assert_refused_unchanged(
        lambda: live.node("PBOC").RequestIssuance(request, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_TIME,
    )


def test_negative_heights_are_refused(live: LiveNetwork) -> None:
    """GetBlocks with a negative height: INVALID_ARGUMENT MALFORMED, not a silent empty page."""
    request = bridge_pb.GetBlocksRequest(from_height=1, to_height=-3)
    error = refusal_of(lambda: live.bridge.GetBlocks(request, timeout=RPC_TIMEOUT))
    _short_invalid(error, Reason.MALFORMED)


def test_nodes_keep_serving_after_bad_input(live: LiveNetwork) -> None:
    """After the bad requests above, the nodes still settle a payment."""
    status = live.pay("ICBC", "BOCQ", 1)
    assert status.receipt.outcome == types.OUTCOME_SETTLED


def test_anonymous_garbage_to_the_bridge_is_unauthenticated(live: LiveNetwork) -> None:
    """Without a central bank's signed call, the bridge says UNAUTHENTICATED before reading."""
    channel = live.channel(live.address("bridge"))
    call = channel.unary_unary("/bridge.v1.BridgeLedger/GetGenesis")
    error = refusal_of(lambda: call(b"\xff\xff", timeout=RPC_TIMEOUT))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
