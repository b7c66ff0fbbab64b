"""The bridge node's BridgeLedger service over gRPC, against a real network of node processes,
once on SQLite and once with two bridge processes sharing a PostgreSQL database.

Instructions sent straight to the bridge carry what a central bank node would add: the bank's
signature and its home central bank's endorsement. Every RPC is called at least once with its
answer checked, and refused where a refusal makes sense.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    BRIDGE_SENDER,
    CancelPvp,
    Entry,
    Envelope,
    ExpirePvp,
    Outcome,
    Pay,
    ProposePvp,
)
from bridge.errors import Reason
from bridge.log.blocks import Attestation, attest, attestation_valid
from bridge.log.merkle import merkle_root
from bridge.signing import endorse, sign_as_party
from tests.conftest import (
    RPC_TIMEOUT,
    VALID_FOR_MS,
    network_on_each_store,
    new_id,
    now_ms,
    reason_of,
    refusal_of,
    wait_for,
)

if TYPE_CHECKING:
    from participants.launcher import Network
    from tests.conftest import LiveNetwork

FUNDS = {"ICBC": 50_000_000, "BOCQ": 5_000_000, "HSBCHK": 50_000_000, "BOCHK": 5_000_000}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """The network on each store: one bridge on SQLite, or two bridge processes sharing a
    PostgreSQL database (the first leads, the second stands by)."""
    yield from network_on_each_store(request, tmp_path_factory, bridges=2)


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """Issue working balances once for the module."""
    for bank, amount in FUNDS.items():
        live.issue(bank, amount)


def pay_body(payer: str, payee: str, amount: int, currency: str, **kw: int) -> Pay:
    valid_until = kw.get("valid_until", now_ms() + VALID_FOR_MS)
    return Pay(
        new_id("pay"),
        payer,
        valid_until,
        payee,
        currency,
        amount,
        "INV-2025-0042",
        signed_at=min(now_ms(), valid_until),  # signed before its deadline, even a past one
    )


def submit_stream(
    live: LiveNetwork, requests: list[bridge_pb.SubmitRequest]
) -> dict[int, bridge_pb.SubmitResponse]:
    """Send requests over one Submit stream; answers keyed by correlation id (each once)."""
    answers: dict[int, bridge_pb.SubmitResponse] = {}
    for response in live.bridge.Submit(iter(requests), timeout=60.0):
        assert response.correlation_id not in answers, "answered twice"
        answers[response.correlation_id] = response
    return answers


# ---------------------------------------------------------------------------- health and genesis


@pytest.mark.parametrize("node", ["bridge", "PBOC", "HKMA", "BOT", "CBUAE", "PBOC/admin"])
def test_every_node_reports_serving_on_grpc_health(live: LiveNetwork, node: str) -> None:
    """grpc.health.v1 answers SERVING for the listener and each service it hosts (a central
    bank node: the banks' service on its port, the admin service on the operators' port)."""
    if node.endswith("/admin"):
        address, services = live.admin_address(node[:-6]), ["bridge.v1.CentralBankAdmin"]
    elif node == "bridge":
        address, services = live.address(node), ["bridge.v1.BridgeLedger"]
    else:
        address, services = live.address(node), ["bridge.v1.CentralBank"]
    stub = health_pb2_grpc.HealthStub(live.channel(address))
    for service in ["", *services]:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    error = refusal_of(
        lambda: stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_genesis_is_the_network_configuration(live: LiveNetwork) -> None:
    """GetGenesis returns the configured chain, the four central banks and the quorum."""
    reply = live.bridge.GetGenesis(bridge_pb.GetGenesisRequest(), timeout=RPC_TIMEOUT)
    genesis = wire.genesis_from_proto(reply)
    expected = live.config.genesis()
    assert genesis == expected
    assert bytes(reply.hash) == expected.hash()
    assert [b.id for b in genesis.central_banks] == ["PBOC", "HKMA", "BOT", "CBUAE"]
    assert [b.currency for b in genesis.central_banks] == ["CNY", "HKD", "THB", "AED"]
    assert genesis.quorum == 3  # tolerates one central bank node down


# ---------------------------------------------------------------------------- writes


def test_submit_stream_answers_many_concurrent_instructions_by_correlation_id(
    live: LiveNetwork,
) -> None:
    """Two concurrent Submit streams: every request answered once, by its correlation id."""
    before = live.snapshot()
    rng = random.Random(7)
    streams: list[tuple[list[bridge_pb.SubmitRequest], dict[int, str]]] = []
    moved: dict[tuple[str, str], int] = {}
    for payers in (("ICBC", "BOCQ"), ("HSBCHK", "BOCHK")):
        requests, expected = [], {}
        correlation_ids = rng.sample(range(1, 2**63), 160)
        for index, correlation_id in enumerate(correlation_ids):
            cross_border = "HSBCHK" if payers[0] == "ICBC" else "ICBC"
            payer, payee = payers if index % 2 else (payers[0], cross_border)
            currency = live.currency_of(payer)
            amount = 100 + index
            body = pay_body(payer, payee, amount, currency)
            if index % 20 == 3:  # no endorsement: refused
                instruction = live.signed(body)
                expected[correlation_id] = "UNAUTHENTICATED"
            elif index % 20 == 11:  # expired
                instruction = live.endorsed(pay_body(payer, payee, amount, currency, valid_until=1))
                expected[correlation_id] = "DEADLINE_EXCEEDED"
            elif index % 20 == 17:  # unknown payee
                instruction = live.endorsed(pay_body(payer, "NOBODY", amount, currency))
                expected[correlation_id] = "NOT_FOUND"
            else:
                instruction = live.endorsed(body)
                expected[correlation_id] = "SETTLED"
                moved[(payer, currency)] = moved.get((payer, currency), 0) - amount
                moved[(payee, currency)] = moved.get((payee, currency), 0) + amount
            requests.append(
                bridge_pb.SubmitRequest(correlation_id=correlation_id, instruction=instruction)
            )
        streams.append((requests, expected))

    results: list[dict[int, bridge_pb.SubmitResponse]] = [{}, {}]

    def run(index: int) -> None:
        results[index] = submit_stream(live, streams[index][0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    seqs = []
    for (_, expected), answers in zip(streams, results, strict=True):
        assert set(answers) == set(expected)
        for correlation_id, want in expected.items():
            answer = answers[correlation_id]
            if want == "SETTLED":
                assert answer.WhichOneof("result") == "receipt", answer
                assert answer.receipt.outcome == types.OUTCOME_SETTLED
                assert not answer.receipt.duplicate
                seqs.append(answer.receipt.seq)
            else:
                assert answer.WhichOneof("result") == "refusal", answer
                assert answer.refusal.code == want, answer
    assert len(set(seqs)) == len(seqs)
    after = live.snapshot()
    assert after.entries == before.entries + len(seqs)
    for (participant, currency), delta in moved.items():
        assert after.available(participant, currency) == (
            before.available(participant, currency) + delta
        )
    live.assert_conserved(after)


def test_submit_one_settles_once_and_answers_duplicates(live: LiveNetwork) -> None:
    """SubmitOne records a payment; the same instruction again returns the original receipt."""
    instruction = live.endorsed(pay_body("BOCQ", "ICBC", 2_500, "CNY"))
    receipt = live.bridge.SubmitOne(instruction, timeout=RPC_TIMEOUT)
    assert receipt.outcome == types.OUTCOME_SETTLED
    assert not receipt.duplicate
    again = live.bridge.SubmitOne(instruction, timeout=RPC_TIMEOUT)
    assert again.duplicate
    assert (again.seq, bytes(again.body_hash)) == (receipt.seq, bytes(receipt.body_hash))


def test_submit_one_refuses_with_precise_status(live: LiveNetwork) -> None:
    """SubmitOne refusals: no funds, wrong endorser, a client-sent expiry, each changing nothing."""
    broke = live.endorsed(pay_body("BOCQ", "ICBC", 10**15, "CNY"))
    live.assert_refused_unchanged(
        lambda: live.bridge.SubmitOne(broke, timeout=RPC_TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.INSUFFICIENT_FUNDS,
    )
    body = pay_body("ICBC", "BOCQ", 10, "CNY")
    envelope = sign_as_party(Envelope.of(body), "ICBC", live.key("ICBC"))
    foreign = wire.envelope_to_proto(endorse(envelope, "ICBC", "HKMA", live.key("HKMA")))
    live.assert_refused_unchanged(
        lambda: live.bridge.SubmitOne(foreign, timeout=RPC_TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_HOME_CENTRAL_BANK,
    )
    expiry = wire.envelope_to_proto(
        Envelope.of(
            ExpirePvp(
                new_id("expire"), BRIDGE_SENDER, now_ms(), "ICBC", "nothing", signed_at=now_ms()
            )
        )
    )
    live.assert_refused_unchanged(
        lambda: live.bridge.SubmitOne(expiry, timeout=RPC_TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_A_PARTY,
    )
    empty = types.SignedInstruction()
    live.assert_refused_unchanged(
        lambda: live.bridge.SubmitOne(empty, timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MALFORMED,
    )


# ---------------------------------------------------------------------------- blocks


def test_get_blocks_returns_a_hash_chain_from_genesis(live: LiveNetwork) -> None:
    """GetBlocks: consecutive heights linked by hash, Merkle roots over consecutive entries."""
    live.pay("ICBC", "BOCQ", 1_000)
    sealed = live.finality().sealed_height
    blocks = live.bridge.GetBlocks(bridge_pb.GetBlocksRequest(from_height=1), timeout=RPC_TIMEOUT)
    assert [b.header.height for b in blocks.blocks] == list(range(1, sealed + 1))
    previous = live.config.genesis().hash()
    next_seq = 1
    for block in blocks.blocks:
        received = wire.block_from_proto(block).block
        header = received.header
        assert header.prev_hash == previous
        assert header.first_seq == next_seq
        assert [e.seq for e in received.entries] == list(
            range(next_seq, next_seq + header.entry_count)
        )
        assert merkle_root(list(received.entry_bytes)) == header.merkle_root
        previous = header.hash()
        next_seq += header.entry_count
    window = live.bridge.GetBlocks(
        bridge_pb.GetBlocksRequest(from_height=2, to_height=3), timeout=RPC_TIMEOUT
    )
    assert [b.header.height for b in window.blocks] == [2, 3]
    beyond = live.bridge.GetBlocks(
        bridge_pb.GetBlocksRequest(from_height=sealed + 100), timeout=RPC_TIMEOUT
    )
    assert list(beyond.blocks) == []


def entry_ids(block: types.Block) -> list[str]:
    return [
        Entry.from_canonical_bytes(e.canonical).envelope.body.instruction_id for e in block.entries
    ]


def test_stream_blocks_catches_up_from_height_one_then_follows_new_blocks(
    live: LiveNetwork,
) -> None:
    """StreamBlocks sends every sealed block from height 1, then each new block as sealed."""
    sealed = live.finality().sealed_height
    stream = live.bridge.StreamBlocks(
        bridge_pb.StreamBlocksRequest(from_height=1), timeout=RPC_TIMEOUT
    )
    try:
        caught_up = [next(stream) for _ in range(sealed)]
        assert [b.header.height for b in caught_up] == list(range(1, sealed + 1))
        pay_id = new_id("follow")
        live.pay("HSBCHK", "BOCHK", 777, instruction_id=pay_id)
        height = sealed
        while True:
            block = next(stream)
            height += 1
            assert block.header.height == height
            if pay_id in entry_ids(block):
                break
    finally:
        stream.cancel()


def test_watch_entries_resumes_from_a_sequence_number(live: LiveNetwork) -> None:
    """WatchEntries from seq k repeats exactly the entries from k on, then streams new ones."""
    total = live.entry_count()

    def read(from_seq: int, count: int) -> list[types.EntryEvent]:
        stream = live.bridge.WatchEntries(
            bridge_pb.WatchEntriesRequest(from_seq=from_seq), timeout=RPC_TIMEOUT
        )
        try:
            return [next(stream) for _ in range(count)]
        finally:
            stream.cancel()

    everything = read(1, total)
    assert [e.entry.seq for e in everything] == list(range(1, total + 1))
    assert all(e.block_height >= 1 for e in everything)
    resume_at = total // 2
    resumed = read(resume_at, total - resume_at + 1)
    assert [bytes(e.entry.canonical) for e in resumed] == [
        bytes(e.entry.canonical) for e in everything[resume_at - 1 :]
    ]
    stream = live.bridge.WatchEntries(
        bridge_pb.WatchEntriesRequest(from_seq=total + 1), timeout=RPC_TIMEOUT
    )
    try:
        pay_id = new_id("watched")
        live.pay("ICBC", "BOCQ", 321, instruction_id=pay_id)
        event = next(stream)
        entry = wire.entry_from_proto(event.entry)
        assert entry.seq == total + 1
        assert entry.envelope.body.instruction_id == pay_id
        assert entry.outcome is Outcome.SETTLED
    finally:
        stream.cancel()


# ---------------------------------------------------------------------------- attestations


def test_blocks_become_final_once_all_four_central_banks_attest(live: LiveNetwork) -> None:
    """GetFinality: each sealed block gets four valid attestations and is then final."""
    live.pay("ICBC", "HSBCHK", 4_200)
    height = live.wait_all_final()
    for h in range(1, height + 1):
        live.wait_attested_by_all(h)
    verifier = FastVerifier()
    genesis = live.config.genesis()
    keys = {b.id: b.public_key for b in genesis.central_banks}
    for h in range(1, height + 1):
        reply = live.finality(h)
        assert reply.final
        assert reply.final_height >= h
        assert sorted(a.central_bank for a in reply.attestations) == sorted(keys)
        for attestation in reply.attestations:
            decoded = wire.attestation_from_proto(attestation)
            assert attestation_valid(decoded, keys[decoded.central_bank], verifier)
    blocks = live.bridge.GetBlocks(
        bridge_pb.GetBlocksRequest(from_height=1, to_height=height), timeout=RPC_TIMEOUT
    )
    assert all(b.final for b in blocks.blocks)
    assert not live.finality(height + 1000).final


@pytest.fixture
def sealed_header(live: LiveNetwork) -> types.BlockHeader:
    live.wait_all_final()
    blocks = live.bridge.GetBlocks(
        bridge_pb.GetBlocksRequest(from_height=1, to_height=1), timeout=RPC_TIMEOUT
    )
    return blocks.blocks[0].header


def test_submit_attestation_accepts_a_valid_one_again(
    live: LiveNetwork, sealed_header: types.BlockHeader
) -> None:
    """Resubmitting a central bank's valid attestation is accepted and reports finality."""
    attestation = attest(wire.header_from_proto(sealed_header), "PBOC", live.key("PBOC"))
    reply = live.bridge.SubmitAttestation(
        wire.attestation_to_proto(attestation), timeout=RPC_TIMEOUT
    )
    assert reply.final
    assert reply.final_height >= 1


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("unknown_central_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.UNKNOWN_SIGNER),
        ("commercial_bank", grpc.StatusCode.UNAUTHENTICATED, Reason.UNKNOWN_SIGNER),
        ("wrong_hash", grpc.StatusCode.INVALID_ARGUMENT, Reason.MALFORMED),
        ("bad_signature", grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_SIGNATURE),
        ("unknown_height", grpc.StatusCode.NOT_FOUND, Reason.UNKNOWN_INSTRUCTION),
    ],
)
def test_submit_attestation_refuses_what_does_not_verify(
    live: LiveNetwork,
    sealed_header: types.BlockHeader,
    case: str,
    code: grpc.StatusCode,
    reason: Reason,
) -> None:
    """SubmitAttestation refuses an unknown attester, a wrong hash, a bad signature, no block."""
    header = wire.header_from_proto(sealed_header)
    if case == "unknown_central_bank":
        attestation = attest(header, "SAMA", PrivateKey.generate())
    elif case == "commercial_bank":
        attestation = attest(header, "ICBC", live.key("ICBC"))
    elif case == "wrong_hash":
        good = attest(header, "HKMA", live.key("HKMA"))
        attestation = Attestation(good.height, bytes(32), "HKMA", good.signature)
    elif case == "bad_signature":
        attestation = attest(header, "HKMA", live.key("BOT"))
    else:
        good = attest(header, "HKMA", live.key("HKMA"))
        attestation = Attestation(10**9, good.block_hash, "HKMA", good.signature)
    before = {a.central_bank: bytes(a.signature) for a in live.finality(1).attestations}
    error = refusal_of(
        lambda: live.bridge.SubmitAttestation(
            wire.attestation_to_proto(attestation), timeout=RPC_TIMEOUT
        )
    )
    assert error.code() == code
    assert reason_of(error) is reason
    after = {a.central_bank: bytes(a.signature) for a in live.finality(1).attestations}
    assert after == before


def test_attest_stream_answers_each_attestation_in_order(
    live: LiveNetwork, sealed_header: types.BlockHeader
) -> None:
    """On one AttestStream a bad attestation is answered with its refusal (the status code and
    reason SubmitAttestation gives) and changes nothing, and the stream goes on to accept the
    next, valid one with the finality reached."""
    header = wire.header_from_proto(sealed_header)
    forged = attest(header, "HKMA", live.key("BOT"))
    valid = attest(header, "HKMA", live.key("HKMA"))
    before = {a.central_bank: bytes(a.signature) for a in live.finality(1).attestations}
    answers = list(
        live.bridge.AttestStream(
            iter([wire.attestation_to_proto(forged), wire.attestation_to_proto(valid)]),
            timeout=RPC_TIMEOUT,
        )
    )
    assert [a.WhichOneof("result") for a in answers] == ["refusal", "accepted"]
    assert answers[0].refusal.code == grpc.StatusCode.UNAUTHENTICATED.name
    assert answers[0].refusal.reason == Reason.BAD_SIGNATURE.value
    assert answers[1].accepted.final
    assert answers[1].accepted.final_height >= 1
    after = {a.central_bank: bytes(a.signature) for a in live.finality(1).attestations}
    assert after.get("BOT") == before.get("BOT")
    assert after["HKMA"] in (before.get("HKMA"), bytes(valid.signature))


def test_attest_stream_ends_invalid_argument_on_undecodable_bytes(live: LiveNetwork) -> None:
    """Raw bytes that are no Attestation, from an authenticated central bank node through a
    generic channel, end the AttestStream with INVALID_ARGUMENT / MALFORMED."""
    method = "/bridge.v1.BridgeLedger/AttestStream"
    channel = grpc.insecure_channel(live.config.bridge_address)
    try:
        call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        answers = call(
            iter([b"\x0a\xff"]),
            metadata=live.signed_call("PBOC", "bridge", method),
            timeout=RPC_TIMEOUT,
        )
        error = refusal_of(lambda: list(answers))
    finally:
        channel.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) is Reason.MALFORMED


# ---------------------------------------------------------------------------- state


def test_get_balances_lists_one_participants_accounts(live: LiveNetwork) -> None:
    """GetBalances: the participant's accounts only, with available and held amounts."""
    accounts = live.bridge.GetBalances(
        bridge_pb.GetBalancesRequest(participant="BOCHK"), timeout=RPC_TIMEOUT
    ).accounts
    assert {a.participant for a in accounts} == {"BOCHK"}
    hkd = next(a for a in accounts if a.currency == "HKD")
    assert hkd.available > 0
    assert hkd.held == 0
    nobody = live.bridge.GetBalances(
        bridge_pb.GetBalancesRequest(participant="NOBODY"), timeout=RPC_TIMEOUT
    )
    assert list(nobody.accounts) == []


def test_get_participant_describes_banks_and_central_banks(live: LiveNetwork) -> None:
    """GetParticipant: a bank's home and status; a central bank's currency; unknown: NOT_FOUND."""
    bank = live.bridge.GetParticipant(
        bridge_pb.GetParticipantRequest(participant="ICBC"), timeout=RPC_TIMEOUT
    )
    assert bank.participant.kind == types.PARTICIPANT_KIND_COMMERCIAL_BANK
    assert bank.participant.home_central_bank == "PBOC"
    assert bank.participant.jurisdiction == "CN"
    assert bank.participant.status == types.PARTICIPANT_STATUS_ACTIVE
    assert bytes(bank.participant.public_key) == live.key("ICBC").public_key
    assert list(bank.currencies) == []
    central = live.bridge.GetParticipant(
        bridge_pb.GetParticipantRequest(participant="HKMA"), timeout=RPC_TIMEOUT
    )
    assert central.participant.kind == types.PARTICIPANT_KIND_CENTRAL_BANK
    assert [c.code for c in central.currencies] == ["HKD"]
    error = refusal_of(
        lambda: live.bridge.GetParticipant(
            bridge_pb.GetParticipantRequest(participant="NOBODY"), timeout=RPC_TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) is Reason.UNKNOWN_PARTICIPANT


def test_list_participants_filters_by_home_central_bank(live: LiveNetwork) -> None:
    """ListParticipants: everyone, or one central bank and its banks."""
    everyone = live.bridge.ListParticipants(
        bridge_pb.ListParticipantsRequest(), timeout=RPC_TIMEOUT
    ).participants
    assert {p.id for p in everyone} >= set(live.participants)
    hong_kong = live.bridge.ListParticipants(
        bridge_pb.ListParticipantsRequest(home_central_bank="HKMA"), timeout=RPC_TIMEOUT
    ).participants
    assert sorted(p.id for p in hong_kong) == ["BOCHK", "HKMA", "HSBCHK"]


def test_get_pvp_and_get_receipt_describe_recorded_instructions(live: LiveNetwork) -> None:
    """GetPvp and GetReceipt answer for recorded ids and NOT_FOUND for unknown ones."""
    proposal = ProposePvp(
        new_id("pvp"),
        "ICBC",
        now_ms() + VALID_FOR_MS,
        "HSBCHK",
        "CNY",
        10_000,
        "HKD",
        10_850,
        "1.085",
        now_ms() + 60_000,
        "corridor FX",
        signed_at=now_ms(),
    )
    receipt = live.bridge.SubmitOne(live.endorsed(proposal), timeout=RPC_TIMEOUT)
    assert receipt.outcome == types.OUTCOME_HELD
    pvp = live.bridge.GetPvp(
        bridge_pb.GetPvpRequest(proposer="ICBC", pvp_id=proposal.instruction_id),
        timeout=RPC_TIMEOUT,
    )
    assert pvp.status == types.OUTCOME_HELD
    assert pvp.terms_hash == proposal.terms_hash()
    assert [(leg.payer, leg.currency, leg.amount) for leg in pvp.legs] == [
        ("ICBC", "CNY", 10_000),
        ("HSBCHK", "HKD", 10_850),
    ]
    status = live.bridge.GetReceipt(
        bridge_pb.GetReceiptRequest(sender="ICBC", instruction_id=proposal.instruction_id),
        timeout=RPC_TIMEOUT,
    )
    assert status.receipt.seq == receipt.seq
    assert status.receipt.outcome == types.OUTCOME_HELD
    assert status.block_height >= 1
    for call in (
        lambda: live.bridge.GetPvp(
            bridge_pb.GetPvpRequest(proposer="ICBC", pvp_id="no-such-pvp"), timeout=RPC_TIMEOUT
        ),
        lambda: live.bridge.GetReceipt(
            bridge_pb.GetReceiptRequest(sender="ICBC", instruction_id="no-such-id"),
            timeout=RPC_TIMEOUT,
        ),
    ):
        assert refusal_of(call).code() == grpc.StatusCode.NOT_FOUND
    cancel = live.endorsed(
        CancelPvp(
            new_id("cancel"),
            "ICBC",
            now_ms() + VALID_FOR_MS,
            proposal.instruction_id,
            signed_at=now_ms(),
        )
    )
    assert live.bridge.SubmitOne(cancel, timeout=RPC_TIMEOUT).outcome == types.OUTCOME_CANCELLED


def test_get_currency_supply_matches_the_sum_of_balances(live: LiveNetwork) -> None:
    """GetCurrencySupply: outstanding = issued - redeemed = every balance; unknown: NOT_FOUND."""
    snapshot = live.snapshot()
    for currency in live.currencies:
        supply = live.bridge.GetCurrencySupply(
            types.CurrencySupplyRequest(currency=currency), timeout=RPC_TIMEOUT
        )
        assert supply.currency == currency
        assert supply.outstanding == supply.issued - supply.redeemed
        held_and_available = sum(
            a + h for (_, c), (a, h, _) in snapshot.accounts.items() if c == currency
        )
        assert supply.outstanding == held_and_available
    assert snapshot.supply["CNY"][0] >= FUNDS["ICBC"] + FUNDS["BOCQ"]
    error = refusal_of(
        lambda: live.bridge.GetCurrencySupply(
            types.CurrencySupplyRequest(currency="XAU"), timeout=RPC_TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) is Reason.UNKNOWN_CURRENCY


def test_finality_heights_are_consistent(live: LiveNetwork) -> None:
    """GetFinality: final height never passes the sealed height; unasked height is not final."""
    reply = live.finality()
    assert 0 <= reply.final_height <= reply.sealed_height
    assert not reply.final
    assert list(reply.attestations) == []
    wait_for(
        lambda: live.finality().final_height == live.finality().sealed_height,
        timeout=30,
        what="finality to catch up",
    )
