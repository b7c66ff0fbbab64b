"""A generic client built from server reflection alone: no generated stubs or messages.

`ReflectionClient` asks a node for its services (grpc.reflection.v1alpha), loads their file
descriptors into its own `DescriptorPool`, makes message classes with
`message_factory.GetMessageClass` and calls methods by name over a plain channel. It is what a
bank's integrator, or grpcurl, sees of the wire contract; the tests check that it is enough to
read the ledger, sign a query, pay and watch entries.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bridge.domain import Pay, party_message
from bridge.wire import query_message
from tests.conftest import RPC_TIMEOUT, VALID_FOR_MS, new_id, now_ms, reason_of, refusal_of

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
BRIDGE_METHODS = {
    "Submit",
    "SubmitOne",
    "GetBlocks",
    "StreamBlocks",
    "SubmitAttestation",
    "AttestStream",
    "GetBalances",
    "GetParticipant",
    "ListParticipants",
    "GetPvp",
    "GetReceipt",
    "GetCurrencySupply",
    "GetGenesis",
    "GetFinality",
    "WatchEntries",
}


class ReflectionClient:
    """Calls any method of a node by its full name, with messages built from reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def services(self) -> list[str]:
        return sorted(self.database.get_services())

    def method(self, full_name: str) -> MethodDescriptor:
        """`full_name` is "package.Service/Method"."""
        service, name = full_name.split("/")
        found: MethodDescriptor = self.pool.FindServiceByName(service).FindMethodByName(name)
        return found

    def request(self, full_name: str, fields: dict[str, Any] | None = None) -> Message:
        """A new request message for the method, filled from a proto3 JSON dict."""
        cls = message_factory.GetMessageClass(self.method(full_name).input_type)
        message: Message = cls()
        if fields:
            json_format.ParseDict(fields, message)
        return message

    def _path_and_codec(self, full_name: str) -> tuple[str, Any]:
        output = message_factory.GetMessageClass(self.method(full_name).output_type)
        return f"/{full_name}", output.FromString

    def call(
        self,
        full_name: str,
        request: Message,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Message:
        path, decode = self._path_and_codec(full_name)
        rpc = self.channel.unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=decode
        )
        reply: Message = rpc(request, metadata=tuple(metadata), timeout=RPC_TIMEOUT)
        return reply

    def stream(
        self, full_name: str, request: Message, metadata: Sequence[tuple[str, str]] = ()
    ) -> Iterator[Message]:
        path, decode = self._path_and_codec(full_name)
        rpc = self.channel.unary_stream(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=decode
        )
        calls: Iterator[Message] = rpc(request, metadata=tuple(metadata), timeout=RPC_TIMEOUT)
        return calls


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.fixture(scope="module")
def clients(live: LiveNetwork) -> Iterator[dict[str, ReflectionClient]]:
    nodes = ["bridge", *live.central_bank_ids]
    channels = {node: grpc.insecure_channel(live.address(node)) for node in nodes}
    for cb in live.central_bank_ids:  # the operators' listeners
        channels[f"{cb}/admin"] = grpc.insecure_channel(live.admin_address(cb))
    try:
        yield {node: ReflectionClient(channel) for node, channel in channels.items()}
    finally:
        for channel in channels.values():
            channel.close()


@pytest.mark.parametrize("node", ["bridge", "PBOC", "HKMA", "BOT", "CBUAE", "PBOC/admin"])
def test_reflection_lists_every_service_of_a_node(
    clients: dict[str, ReflectionClient], node: str
) -> None:
    """Server reflection names the listener's services, health and reflection itself: the
    admin service on the operators' listener only."""
    expected = {
        "bridge": ["bridge.v1.BridgeLedger"],
        "PBOC/admin": ["bridge.v1.CentralBankAdmin"],
    }.get(node, ["bridge.v1.CentralBank"])
    assert clients[node].services() == sorted([*expected, HEALTH, REFLECTION])


def test_reflection_describes_methods_and_their_streaming(
    clients: dict[str, ReflectionClient],
) -> None:
    """The bridge's descriptor has every BridgeLedger method, with the right stream shapes."""
    service = clients["bridge"].pool.FindServiceByName("bridge.v1.BridgeLedger")
    assert {m.name for m in service.methods} == BRIDGE_METHODS
    submit = clients["bridge"].method("bridge.v1.BridgeLedger/Submit")
    assert submit.client_streaming
    assert submit.server_streaming
    blocks = clients["bridge"].method("bridge.v1.BridgeLedger/StreamBlocks")
    assert not blocks.client_streaming
    assert blocks.server_streaming
    pay = clients["PBOC"].method("bridge.v1.CentralBank/Pay")
    assert pay.input_type.full_name == "bridge.v1.SignedInstruction"
    assert pay.output_type.full_name == "bridge.v1.InstructionStatus"
    oneof = pay.input_type.fields_by_name["instruction"].message_type.oneofs_by_name["body"]
    assert "pvp_dual" in {f.name for f in oneof.fields}


def test_dynamic_genesis_and_finality_calls(
    live: LiveNetwork, clients: dict[str, ReflectionClient]
) -> None:
    """GetGenesis and GetFinality answer a client that only knows the descriptors it fetched."""
    bridge = clients["bridge"]
    genesis = as_dict(
        bridge.call(
            "bridge.v1.BridgeLedger/GetGenesis",
            bridge.request("bridge.v1.BridgeLedger/GetGenesis"),
            as_central_bank(live, "bridge.v1.BridgeLedger/GetGenesis"),
        )
    )
    assert genesis["chain_id"] == live.config.chain_id
    assert genesis["quorum"] == 3
    assert [b["currency"] for b in genesis["central_banks"]] == ["CNY", "HKD", "THB", "AED"]
    assert base64.b64decode(genesis["hash"]) == live.config.genesis().hash()
    live.wait_all_final()
    live.wait_attested_by_all(1)
    finality = bridge.call(
        "bridge.v1.BridgeLedger/GetFinality",
        bridge.request("bridge.v1.BridgeLedger/GetFinality", {"height": 1}),
        as_central_bank(live, "bridge.v1.BridgeLedger/GetFinality"),
    )
    reply = as_dict(finality)
    assert reply["final"] is True
    assert int(reply["final_height"]) >= 1
    assert {a["central_bank"] for a in reply["attestations"]} == set(live.central_bank_ids)


def as_central_bank(live: LiveNetwork, method: str) -> tuple[tuple[str, str], ...]:
    """PBOC's node's signed-call headers for a bridge method ("package.Service/Method")."""
    return live.signed_call("PBOC", "bridge", f"/{method}")


def signed_query(
    client: ReflectionClient, live: LiveNetwork, method: str, bank: str, fields: dict[str, Any]
) -> Message:
    """A dynamic request with `auth` signed over `bridge.wire.query_message`."""
    request = client.request(method, fields)
    auth: Any = getattr(request, "auth")  # noqa: B009 - a dynamic message has no static fields
    auth.requester = bank
    auth.timestamp = now_ms()
    auth.signature = live.key(bank).sign(query_message(f"/{method}", request))
    return request


def test_dynamic_balances_query_with_a_signed_auth(
    live: LiveNetwork, clients: dict[str, ReflectionClient]
) -> None:
    """A dynamically built, signed BalancesQuery reads the bank's accounts; tampered: refused."""
    live.issue("ICBC", 1_000_000)
    node = clients["PBOC"]
    method = "bridge.v1.CentralBank/GetBalances"
    request = signed_query(node, live, method, "ICBC", {"currency": "CNY"})
    accounts = as_dict(node.call(method, request))["accounts"]
    assert [(a["participant"], a["currency"]) for a in accounts] == [("ICBC", "CNY")]
    assert int(accounts[0]["available"]) == live.balance("ICBC", "CNY")[0]
    tampered = signed_query(node, live, method, "ICBC", {"currency": "CNY"})
    getattr(tampered, "auth").requester = "BOCQ"  # noqa: B009
    error = refusal_of(lambda: node.call(method, tampered))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error).value == "BAD_SIGNATURE"


def test_dynamic_payment_and_entry_stream(
    live: LiveNetwork, clients: dict[str, ReflectionClient]
) -> None:
    """A Pay built from JSON settles; WatchEntries streams its entry to a dynamic client."""
    live.issue("HSBCHK", 1_000_000)
    body = Pay(
        new_id("dyn"),
        "HSBCHK",
        now_ms() + VALID_FOR_MS,
        "BOCHK",
        "HKD",
        4_321,
        "dyn",
        signed_at=now_ms(),
    )
    signature = live.key("HSBCHK").sign(party_message(body.canonical_bytes()))
    node = clients["HKMA"]
    request = node.request(
        "bridge.v1.CentralBank/Pay",
        {
            "instruction": {
                "instruction_id": body.instruction_id,
                "sender": body.sender,
                "valid_until": str(body.valid_until),
                "signed_at": str(body.signed_at),
                "pay": {"payee": "BOCHK", "currency": "HKD", "amount": "4321", "reference": "dyn"},
            },
            "signatures": [{"signer": "HSBCHK", "value": base64.b64encode(signature).decode()}],
        },
    )
    status = as_dict(node.call("bridge.v1.CentralBank/Pay", request))
    assert status["receipt"]["outcome"] == "OUTCOME_SETTLED"
    seq = int(status["receipt"]["seq"])
    bridge = clients["bridge"]
    stream = bridge.stream(
        "bridge.v1.BridgeLedger/WatchEntries",
        bridge.request("bridge.v1.BridgeLedger/WatchEntries", {"from_seq": str(seq)}),
        as_central_bank(live, "bridge.v1.BridgeLedger/WatchEntries"),
    )
    try:
        event = as_dict(next(stream))
    finally:
        stream.cancel()  # type: ignore[attr-defined]
    assert int(event["entry"]["seq"]) == seq
    assert int(event["block_height"]) >= 1
    assert base64.b64decode(event["entry"]["canonical"]).startswith(b'{"body":')


def test_dynamic_admin_call_carries_the_bearer_token(
    live: LiveNetwork, clients: dict[str, ReflectionClient]
) -> None:
    """CentralBankAdmin/ListBanks over reflection on the operators' listener: with the token it
    answers, without it not."""
    node = clients["BOT/admin"]
    method = "bridge.v1.CentralBankAdmin/ListBanks"
    listed = as_dict(node.call(method, node.request(method), live.admin_metadata("BOT")))
    assert sorted(p["id"] for p in listed["participants"]) == ["KBANK", "SCB"]
    error = refusal_of(lambda: node.call(method, node.request(method)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
