"""Who may call what, over TLS-off networks: the bridge answers central bank nodes only (signed
calls), a node endorses for its authenticated peers only and checks the endorsement it relies
on, its admin service lives on the operators' own listener, and GetPvp tells a bank nothing
about PvPs it is no party to.

The outsider's view is a generic client: method paths and shapes from server reflection, raw
protobuf bytes over a plain `grpc.insecure_channel`, no generated stubs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp, Envelope, Pay, ProposePvp, Signature
from bridge.errors import Reason
from bridge.node.caller_auth import CallerSigner
from bridge.signing import endorse
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    cross_border_dual_pvp,
    new_id,
    now_ms,
    reason_of,
    refusal_of,
)

if TYPE_CHECKING:
    from tests.conftest import LiveNetwork

BRIDGE_SERVICE = "bridge.v1.BridgeLedger"
ENDORSE = "/bridge.v1.CentralBank/EndorseDualPvp"
ENDORSE_BATCH = "/bridge.v1.CentralBank/EndorseDualPvps"
Headers = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """Working balances for the banks the tests move money between."""
    for bank in ("ICBC", "HSBCHK"):
        live.issue(bank, 50_000_000)


@pytest.fixture
def plain(live: LiveNetwork) -> Iterator[grpc.Channel]:
    """A plain channel to the bridge with no credentials at all."""
    with grpc.insecure_channel(live.config.bridge_address) as channel:
        yield channel


def pay(amount: int = 1_000) -> Pay:
    return Pay(
        new_id("pay"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        amount,
        "auth",
        signed_at=now_ms(),
    )


def dual() -> DualPvp:
    return cross_border_dual_pvp(10_000, 10_850, "caller authentication")


# ---------------------------------------------------------------------------- the bridge


def raw_requests(live: LiveNetwork) -> dict[str, bytes]:
    """Request bytes per method that would act or answer if the caller were let in."""
    settles = live.endorsed(pay()).SerializeToString()
    submit = bridge_pb.SubmitRequest(correlation_id=1, instruction=live.endorsed(pay()))
    attestation = types.Attestation(height=1, central_bank="PBOC", signature=b"\x01" * 64)
    return {
        "SubmitOne": settles,
        "Submit": submit.SerializeToString(),
        "SubmitAttestation": attestation.SerializeToString(),
        "AttestStream": attestation.SerializeToString(),
        "GetBalances": bridge_pb.GetBalancesRequest(participant="ICBC").SerializeToString(),
        "GetParticipant": bridge_pb.GetParticipantRequest(participant="ICBC").SerializeToString(),
        "GetBlocks": bridge_pb.GetBlocksRequest(from_height=1).SerializeToString(),
        "StreamBlocks": bridge_pb.StreamBlocksRequest(from_height=1).SerializeToString(),
        "WatchEntries": bridge_pb.WatchEntriesRequest(from_seq=1).SerializeToString(),
        "GetCurrencySupply": types.CurrencySupplyRequest(currency="CNY").SerializeToString(),
    }


def call_raw(
    channel: grpc.Channel,
    path: str,
    data: bytes,
    *,
    client_streaming: bool,
    server_streaming: bool,
    metadata: Headers = (),
) -> object:
    """Call `path` with raw bytes; read the first answer of a stream. Raises grpc.RpcError."""
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(client_streaming, server_streaming)]
    rpc = kind(path, request_serializer=None, response_deserializer=None)
    request = iter([data]) if client_streaming else data
    answer = rpc(request, metadata=metadata, timeout=RPC_TIMEOUT)
    return next(iter(answer)) if server_streaming else answer


def test_every_bridge_method_refuses_an_anonymous_generic_client(
    live: LiveNetwork, plain: grpc.Channel
) -> None:
    """Every BridgeLedger read and write, called without credentials by a reflection-built raw
    client, is UNAUTHENTICATED / CALLER_NOT_AUTHENTICATED and changes nothing."""
    database = ProtoReflectionDescriptorDatabase(plain)
    assert BRIDGE_SERVICE in set(database.get_services())
    pool = descriptor_pool.DescriptorPool(database)
    service_descriptor = pool.FindServiceByName(BRIDGE_SERVICE)
    requests = raw_requests(live)
    before = live.snapshot()
    called = set()
    for method in service_descriptor.methods:
        error = refusal_of(
            lambda m=method: call_raw(
                plain,
                f"/{BRIDGE_SERVICE}/{m.name}",
                requests.get(m.name, b""),
                client_streaming=m.client_streaming,
                server_streaming=m.server_streaming,
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, error.details())
        assert reason_of(error) is Reason.CALLER_NOT_AUTHENTICATED, method.name
        called.add(method.name)
    assert len(called) == 15
    assert live.snapshot() == before


def test_health_and_reflection_stay_open_to_anyone(live: LiveNetwork, plain: grpc.Channel) -> None:
    """Without credentials the bridge still answers its health check and server reflection."""
    health = health_pb2_grpc.HealthStub(plain)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(plain).get_services())
    assert BRIDGE_SERVICE in services


def signer_for(live: LiveNetwork, caller: str, key_of: str, *, shift_ms: int = 0) -> CallerSigner:
    return CallerSigner(
        chain_id=live.config.chain_id,
        caller=caller,
        audience="bridge",
        signer=live.key(key_of),
        clock=lambda: now_ms() + shift_ms,
    )


def bad_headers(live: LiveNetwork) -> dict[str, Headers]:
    """Signed-call headers that must not get in, each wrong in one way."""
    genesis = "/bridge.v1.BridgeLedger/GetGenesis"
    good = live.signed_call("PBOC", "bridge", genesis)
    return {
        "expired": signer_for(live, "PBOC", "PBOC", shift_ms=-120_000).headers(genesis),
        "from the future": signer_for(live, "PBOC", "PBOC", shift_ms=120_000).headers(genesis),
        "forged with a bank's key": live.signed_call("PBOC", "bridge", genesis, signer="ICBC"),
        "a bank as the caller": live.signed_call("ICBC", "bridge", genesis),
        "signed for another method": live.signed_call(
            "PBOC", "bridge", "/bridge.v1.BridgeLedger/GetFinality"
        ),
        "signed for a peer node": live.signed_call("PBOC", "HKMA", genesis),
        "time changed after signing": tuple(
            (k, str(int(v) + 1) if k == "x-bridge-time" else v) for k, v in good
        ),
        "not base64": tuple((k, "!!" if k == "x-bridge-signature" else v) for k, v in good),
        "caller only": good[:1],
    }


def test_forged_or_stale_signed_calls_are_unauthenticated(
    live: LiveNetwork, plain: grpc.Channel
) -> None:
    """A signed-call header that is stale, forged, replayed on another method or callee, or
    incomplete is UNAUTHENTICATED; the genuine one gets in."""
    stub = bridge_grpc.BridgeLedgerStub(plain)
    for case, headers in bad_headers(live).items():
        error = refusal_of(
            lambda h=headers: stub.GetGenesis(
                bridge_pb.GetGenesisRequest(), metadata=h, timeout=RPC_TIMEOUT
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, case
        assert reason_of(error) is Reason.CALLER_NOT_AUTHENTICATED, case
    genuine = live.signed_call("HKMA", "bridge", "/bridge.v1.BridgeLedger/GetGenesis")
    genesis = stub.GetGenesis(bridge_pb.GetGenesisRequest(), metadata=genuine, timeout=RPC_TIMEOUT)
    assert bytes(genesis.hash) == live.config.genesis().hash()


def test_a_signed_write_from_a_central_bank_node_settles(
    live: LiveNetwork, plain: grpc.Channel
) -> None:
    """SubmitOne with PBOC's signed call settles; the same bytes without it changed nothing."""
    instruction = live.endorsed(pay(2_000))
    stub = bridge_grpc.BridgeLedgerStub(plain)
    live.assert_refused_unchanged(
        lambda: stub.SubmitOne(instruction, timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.CALLER_NOT_AUTHENTICATED,
    )
    headers = live.signed_call("PBOC", "bridge", "/bridge.v1.BridgeLedger/SubmitOne")
    receipt = stub.SubmitOne(instruction, metadata=headers, timeout=RPC_TIMEOUT)
    assert receipt.outcome == types.OUTCOME_SETTLED


# ---------------------------------------------------------------------------- the admin listener


def issue_request() -> cb_pb.IssueRequest:
    return cb_pb.IssueRequest(
        instruction_id=new_id("issue"),
        valid_until=now_ms() + VALID_FOR_MS,
        body=types.Issue(to="ICBC", currency="CNY", amount=5_000),
    )


def test_the_bank_port_serves_no_admin_method(live: LiveNetwork) -> None:
    """CentralBankAdmin on the bank-facing port is UNIMPLEMENTED, even with the right token."""
    on_bank_port = cb_grpc.CentralBankAdminStub(live.channel(live.address("PBOC")))
    token = live.admin_metadata("PBOC")
    calls: list[Callable[[], object]] = [
        lambda: on_bank_port.Issue(issue_request(), metadata=token, timeout=RPC_TIMEOUT),
        lambda: on_bank_port.ListBanks(
            cb_pb.ListBanksRequest(), metadata=token, timeout=RPC_TIMEOUT
        ),
        lambda: on_bank_port.ListAccounts(
            cb_pb.ListAccountsRequest(), metadata=token, timeout=RPC_TIMEOUT
        ),
    ]
    for call in calls:
        live.assert_refused_unchanged(call, grpc.StatusCode.UNIMPLEMENTED)


def test_the_admin_port_needs_the_token(live: LiveNetwork) -> None:
    """On the operators' listener: no token or a wrong one is UNAUTHENTICATED; the token works;
    the banks' service is not served there."""
    admin = live.admin("PBOC")
    for metadata in ((), (("authorization", "Bearer not-the-token"),)):
        live.assert_refused_unchanged(
            lambda m=metadata: admin.Issue(issue_request(), metadata=m, timeout=RPC_TIMEOUT),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    status = admin.Issue(issue_request(), metadata=live.admin_metadata("PBOC"), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_ISSUED
    banks_service_there = cb_grpc.CentralBankStub(live.channel(live.admin_address("PBOC")))
    error = refusal_of(lambda: banks_service_there.Pay(live.signed(pay()), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert live.config.central_bank("PBOC").admin_address.startswith("127.0.0.1:")


# ---------------------------------------------------------------------------- EndorseDualPvp


def for_hkma(live: LiveNetwork, *, junk: bool = False) -> types.SignedInstruction:
    """Both banks' signatures and an endorsement of ICBC's leg labelled PBOC's: genuine, or
    junk bytes."""
    envelope = wire.envelope_from_proto(live.dual_signed(dual()))
    if junk:
        return wire.envelope_to_proto(
            envelope.with_signature(Signature("PBOC", b"\x30" + b"\x07" * 70, endorses="ICBC"))
        )
    return wire.envelope_to_proto(endorse(envelope, "ICBC", "PBOC", live.key("PBOC")))


def test_endorse_dual_pvp_refuses_a_junk_proposer_endorsement(live: LiveNetwork) -> None:
    """Junk bytes labelled as PBOC's endorsement, or PBOC's endorsement of another PvP, are
    BAD_SIGNATURE, although the caller is PBOC's authenticated node."""
    hkma = live.node("HKMA")
    as_pboc = live.signed_call("PBOC", "HKMA", ENDORSE)
    junk = for_hkma(live, junk=True)
    live.assert_refused_unchanged(
        lambda: hkma.EndorseDualPvp(junk, metadata=as_pboc, timeout=RPC_TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.BAD_SIGNATURE,
    )
    other = wire.envelope_from_proto(for_hkma(live))
    moved = wire.envelope_from_proto(for_hkma(live))
    borrowed = moved.endorsement("ICBC")
    assert borrowed is not None
    unendorsed = tuple(s for s in other.signatures if not s.endorses)
    spliced = Envelope.of(other.body, (*unendorsed, borrowed))
    error = refusal_of(
        lambda: hkma.EndorseDualPvp(
            wire.envelope_to_proto(spliced), metadata=as_pboc, timeout=RPC_TIMEOUT
        )
    )
    assert reason_of(error) is Reason.BAD_SIGNATURE
    batch = cb_pb.EndorseDualPvpsRequest(instructions=[junk, for_hkma(live)])
    as_pboc_batch = live.signed_call("PBOC", "HKMA", ENDORSE_BATCH)
    results = hkma.EndorseDualPvps(batch, metadata=as_pboc_batch, timeout=RPC_TIMEOUT).results
    assert [r.WhichOneof("result") for r in results] == ["refusal", "endorsement"]
    assert results[0].refusal.reason == Reason.BAD_SIGNATURE.value


def test_endorse_dual_pvp_answers_only_the_proposers_central_bank(live: LiveNetwork) -> None:
    """A genuine request without credentials, or with forged ones, is UNAUTHENTICATED; from a
    central bank other than the proposer's, PERMISSION_DENIED; from PBOC it is endorsed."""
    hkma = live.node("HKMA")
    request = for_hkma(live)
    for metadata in (
        (),
        live.signed_call("PBOC", "HKMA", ENDORSE, signer="ICBC"),
        live.signed_call("PBOC", "bridge", ENDORSE),
    ):
        error = refusal_of(
            lambda m=metadata: hkma.EndorseDualPvp(request, metadata=m, timeout=RPC_TIMEOUT)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(error) is Reason.CALLER_NOT_AUTHENTICATED
    batch = cb_pb.EndorseDualPvpsRequest(instructions=[request])
    error = refusal_of(lambda: hkma.EndorseDualPvps(batch, timeout=RPC_TIMEOUT))
    assert reason_of(error) is Reason.CALLER_NOT_AUTHENTICATED
    as_bot = live.signed_call("BOT", "HKMA", ENDORSE)
    error = refusal_of(lambda: hkma.EndorseDualPvp(request, metadata=as_bot, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) is Reason.CALLER_NOT_ALLOWED
    as_pboc = live.signed_call("PBOC", "HKMA", ENDORSE)
    reply = wire.envelope_from_proto(
        hkma.EndorseDualPvp(request, metadata=as_pboc, timeout=RPC_TIMEOUT)
    )
    endorsement = reply.endorsement("HSBCHK")
    assert endorsement is not None
    assert endorsement.signer == "HKMA"


def test_dual_pvp_still_settles_across_nodes(live: LiveNetwork) -> None:
    """PBOC's node gets HKMA's endorsement over its authenticated peer channel; it settles."""
    status = live.node("PBOC").SubmitDualPvp(live.dual_signed(dual()), timeout=RPC_TIMEOUT)
    assert status.receipt.outcome == types.OUTCOME_SETTLED


# ---------------------------------------------------------------------------- GetPvp


def test_get_pvp_answers_another_banks_pvp_as_a_missing_one(live: LiveNetwork) -> None:
    """GetPvp by a bank that is no party: an existing PvP and an unknown id get the same code,
    reason and message (up to the id), so existence is not revealed."""
    body = ProposePvp(
        new_id("pvp"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        1_000,
        "HKD",
        1_085,
        "1.085",
        now_ms() + 60_000,
        "existence",
        signed_at=now_ms(),
    )
    live.node("PBOC").ProposePvp(live.signed(body), timeout=RPC_TIMEOUT)
    missing = new_id("pvp")

    def ask(pvp_id: str) -> grpc.RpcError:
        query = live.query("GetPvp", cb_pb.PvpQuery(proposer="ICBC", pvp_id=pvp_id), "BOCHK")
        return refusal_of(lambda: live.node("HKMA").GetPvp(query, timeout=RPC_TIMEOUT))

    existing, unknown = ask(body.instruction_id), ask(missing)
    assert existing.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(existing) is reason_of(unknown) is Reason.UNKNOWN_PVP
    assert existing.details().replace(body.instruction_id, "ID") == unknown.details().replace(
        missing, "ID"
    )
