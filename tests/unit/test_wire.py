"""Conversions between domain values and wire messages (bridge.wire)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from hashlib import sha256

import pytest

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb
from bridge._proto.bridge.v1 import types_pb2 as pb
from bridge.core.ledger import PvpState
from bridge.crypto import FastVerifier, PrivateKey
from bridge.domain import (
    BRIDGE_SENDER,
    INSTRUCTION_TYPES,
    INT64_MAX,
    QUERY_DOMAIN,
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    Currency,
    DualPvp,
    Entry,
    Envelope,
    ExpirePvp,
    FreezeAccount,
    Genesis,
    GenesisBank,
    Instruction,
    Issue,
    Leg,
    Outcome,
    Participant,
    ParticipantKind,
    ParticipantStatus,
    Pay,
    Policy,
    ProposePvp,
    Receipt,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
    party_message,
)
from bridge.errors import STATUS_OF_REASON, Reason, Refused
from bridge.log.blocks import Attestation, seal
from bridge.signing import endorse, sign_as_party

T = 1_728_000_000_000
KEY = b"\x04" + bytes(range(64))
SIG = bytes(range(64))
PROPOSAL = ProposePvp(
    "fx-1",
    "ICBC",
    T + 60_000,
    "KBANK",
    "CNY",
    1_000_000,
    "THB",
    4_850_000,
    "4.85",
    T + 30_000,
    "invoice INV-2025-0042",
    signed_at=T - 5_000,
)

SAMPLES: tuple[Instruction, ...] = (
    AdmitBank("adm-1", "PBOC", T, "ICBC", KEY, signed_at=T - 5_000),
    SetParticipantStatus("st-1", "PBOC", T, "ICBC", "suspended", signed_at=T - 5_000),
    SetParticipantStatus("st-2", "PBOC", T, "ICBC", "active", signed_at=T - 5_000),
    SetPolicy(
        "pol-1", "PBOC", T, 5_000_000_00, 20_000_000_00, ("CN", "HK", "TH"), signed_at=T - 5_000
    ),
    SetPolicy("pol-2", "PBOC", T, 0, 0, signed_at=T - 5_000),
    FreezeAccount("frz-1", "PBOC", T, "ICBC", "CNY", True, signed_at=T - 5_000),
    FreezeAccount("frz-2", "PBOC", T, "ICBC", "CNY", False, signed_at=T - 5_000),
    Issue("iss-1", "PBOC", T, "ICBC", "CNY", INT64_MAX, signed_at=T - 5_000),
    Redeem("red-1", "ICBC", T, "CNY", 1, signed_at=T - 5_000),
    Pay(
        "pay-1",
        "ICBC",
        T,
        "KBANK",
        "CNY",
        12_345,
        "B/L COSU6182736450 Chongqing-Singapore",
        signed_at=T - 5_000,
    ),
    Pay("pay-2", "ICBC", T, "KBANK", "CNY", 12_345, signed_at=T - 5_000),
    Pay("pay-3", "ICBC", T, "KBANK", "CNY", 1, "fa\u00e7ture \u6d77\u8fd0", signed_at=T - 5_000),
    PROPOSAL,
    AcceptPvp("acc-1", "KBANK", T, "ICBC", "fx-1", PROPOSAL.terms_hash(), signed_at=T - 5_000),
    RejectPvp("rej-1", "KBANK", T, "ICBC", "fx-1", signed_at=T - 5_000),
    CancelPvp("can-1", "ICBC", T, "fx-1", signed_at=T - 5_000),
    ExpirePvp("expire-0123", BRIDGE_SENDER, T, "ICBC", "fx-1", signed_at=T - 5_000),
    DualPvp(
        "dual-1",
        "ICBC",
        T,
        "KBANK",
        "CNY",
        1_000_000,
        "THB",
        4_850_000,
        "4.85",
        "PO 88",
        signed_at=T - 5_000,
    ),
)


def envelope_of(body: Instruction) -> Envelope:
    return Envelope.of(
        body, (Signature(body.sender, SIG), Signature("PBOC", SIG[::-1], body.sender))
    )


def over_the_wire(envelope: Envelope) -> Envelope:
    data = wire.envelope_to_proto(envelope).SerializeToString()
    return wire.envelope_from_proto(pb.SignedInstruction.FromString(data))


def refusal_of(msg: pb.SignedInstruction) -> Refused:
    with pytest.raises(Refused) as caught:
        wire.envelope_from_proto(msg)
    return caught.value


def pay_proto(**changes: object) -> pb.SignedInstruction:
    msg = wire.envelope_to_proto(
        envelope_of(Pay("pay-1", "ICBC", T, "KBANK", "CNY", 100, signed_at=T - 5_000))
    )
    for name, value in changes.items():
        setattr(msg.instruction.pay, name, value)
    return msg


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: b.KIND)
def test_signing_time_travels_in_the_header_and_stays_in_the_signed_body(
    body: Instruction,
) -> None:
    """`signed_at` is the header's field 4 on the wire and comes back into the canonical body
    the signatures cover, for every kind."""
    msg = wire.envelope_to_proto(envelope_of(body))
    assert msg.instruction.signed_at == T - 5_000
    decoded = over_the_wire(envelope_of(body))
    assert decoded.body.signed_at == T - 5_000
    assert b'"signed_at":1727999995000' in decoded.body_bytes


def test_samples_cover_every_instruction_kind() -> None:
    """The round-trip samples include every kind the domain defines."""
    assert {s.KIND for s in SAMPLES} == set(INSTRUCTION_TYPES)


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: b.instruction_id)
def test_instruction_round_trip_gives_equal_envelope_and_identical_body_bytes(
    body: Instruction,
) -> None:
    """Every kind survives proto encoding unchanged, down to the canonical bytes signed."""
    envelope = envelope_of(body)
    decoded = over_the_wire(envelope)
    assert decoded == envelope
    assert type(decoded.body) is type(body)
    assert decoded.body_bytes == envelope.body_bytes == body.canonical_bytes()
    assert decoded.signatures == envelope.signatures


def test_body_messages_mirror_the_domain_fields() -> None:
    """Each body message has exactly its domain class's fields, in the same order."""
    oneof = pb.Instruction.DESCRIPTOR.oneofs_by_name["body"]
    header = [f.name for f in pb.Instruction.DESCRIPTOR.fields if f.containing_oneof is None]
    assert header == [f.name for f in fields(Instruction)]
    assert [f.name for f in oneof.fields] == list(INSTRUCTION_TYPES)
    for member in oneof.fields:
        domain = [f.name for f in fields(INSTRUCTION_TYPES[member.name])][len(header) :]
        assert member.message_type is not None
        assert [f.name for f in member.message_type.fields] == domain, member.name


def test_signatures_verify_after_the_round_trip() -> None:
    """A bank signature and its endorsement still verify against the decoded body bytes."""
    bank, central_bank = PrivateKey.generate(), PrivateKey.generate()
    envelope = sign_as_party(Envelope.of(SAMPLES[9]), "ICBC", bank)
    envelope = endorse(envelope, "ICBC", "PBOC", central_bank)
    decoded = over_the_wire(envelope)
    party = decoded.party_signature("ICBC")
    assert party is not None
    assert FastVerifier().verify(bank.public_key, party_message(decoded.body_bytes), party.value)


def test_receipt_round_trip() -> None:
    """A receipt decodes to an equal receipt, outcome and duplicate flag included."""
    for outcome in Outcome:
        receipt = Receipt("ICBC", "pay-1", sha256(b"x").digest(), outcome, 42, duplicate=True)
        data = wire.receipt_to_proto(receipt).SerializeToString()
        assert wire.receipt_from_proto(pb.Receipt.FromString(data)) == receipt


def test_entry_round_trip_carries_canonical_bytes() -> None:
    """An entry decodes equal, and its canonical bytes travel with it."""
    entry = Entry(7, T, envelope_of(PROPOSAL), Outcome.HELD)
    msg = wire.entry_to_proto(entry)
    assert msg.canonical == entry.canonical_bytes()
    decoded = wire.entry_from_proto(pb.SettlementEntry.FromString(msg.SerializeToString()))
    assert decoded == entry
    assert decoded.canonical_bytes() == entry.canonical_bytes()


def test_entry_without_canonical_bytes_decodes() -> None:
    """The canonical bytes are optional: receivers rebuild them from the fields."""
    entry = Entry(7, T, envelope_of(PROPOSAL), Outcome.HELD)
    msg = wire.entry_to_proto(entry)
    msg.ClearField("canonical")
    assert wire.entry_from_proto(msg) == entry


def test_block_round_trip_with_attestations() -> None:
    """A sealed block, its attestations and its finality decode to the same values."""
    entries = [
        Entry(5 + i, T + i, envelope_of(body), Outcome.APPLIED)
        for i, body in enumerate(SAMPLES[:3])
    ]
    block = seal(3, sha256(b"prev").digest(), entries, T + 10)
    attestation = Attestation(3, block.header.hash(), "PBOC", SIG)
    msg = wire.block_to_proto(block, [attestation], final=True)
    received = wire.block_from_proto(pb.Block.FromString(msg.SerializeToString()))
    assert received == wire.ReceivedBlock(block, (attestation,), True)


def test_genesis_round_trip_carries_its_hash() -> None:
    """A genesis decodes equal; the hash it carries is the hash of its fields."""
    genesis = Genesis("mbridge-test", (GenesisBank("PBOC", "CN", KEY, "CNY", 2),), 1)
    msg = wire.genesis_to_proto(genesis)
    assert msg.hash == genesis.hash()
    assert wire.genesis_from_proto(pb.Genesis.FromString(msg.SerializeToString())) == genesis


def test_reference_data_round_trips() -> None:
    """Participants, currencies, policies and legs decode to equal domain values."""
    participant = Participant(
        "ICBC", ParticipantKind.COMMERCIAL_BANK, "CN", KEY, "PBOC", ParticipantStatus.SUSPENDED
    )
    assert wire.participant_from_proto(wire.participant_to_proto(participant)) == participant
    currency = Currency("CNY", 2, "PBOC")
    assert wire.currency_from_proto(wire.currency_to_proto(currency)) == currency
    policy = Policy(100, 1_000, ("CN", "SG"))
    assert wire.policy_from_proto(wire.policy_to_proto(policy)) == policy
    leg = Leg("ICBC", "KBANK", "CNY", 5)
    assert wire.leg_from_proto(wire.leg_to_proto(leg)) == leg


def test_pvp_status_shows_terms_hash_and_legs() -> None:
    """A held PvP is shown with its proposal, the hash to accept and both legs."""
    msg = wire.pvp_to_proto(PvpState(PROPOSAL, Outcome.HELD, 20_000))
    assert (msg.proposer, msg.pvp_id, msg.status) == ("ICBC", "fx-1", pb.OUTCOME_HELD)
    assert msg.terms_hash == PROPOSAL.terms_hash()
    assert wire.instruction_from_proto(msg.proposal) == PROPOSAL
    assert tuple(wire.leg_from_proto(leg) for leg in msg.legs) == PROPOSAL.legs()


def test_supply_and_account_messages() -> None:
    """Supply reports what is outstanding; accounts carry available, held and frozen."""
    supply = wire.supply_to_proto("CNY", (1_000, 250))
    assert (supply.issued, supply.redeemed, supply.outstanding) == (1_000, 250, 750)
    account = wire.account_to_proto("ICBC", "CNY", 70, 30, True)
    assert (account.available, account.held, account.frozen) == (70, 30, True)


def test_refusal_round_trip_names_the_status_code() -> None:
    """A refusal in a stream reply carries the status code the unary call would give."""
    error = Refused(Reason.INSUFFICIENT_FUNDS, "ICBC has 5 CNY available, needs 9")
    msg = wire.refusal_to_proto(error)
    assert msg.code == STATUS_OF_REASON[Reason.INSUFFICIENT_FUNDS] == "FAILED_PRECONDITION"
    back = wire.refusal_from_proto(msg)
    assert (back.reason, back.message) == (error.reason, error.message)
    assert wire.error_detail_to_proto(error).reason == "INSUFFICIENT_FUNDS"


def test_entry_stored_as_canonical_bytes_encodes_equal() -> None:
    """An entry kept as canonical bytes goes on the wire with the same fields and bytes."""
    entry = Entry(7, T, envelope_of(PROPOSAL), Outcome.HELD)
    msg = wire.entry_bytes_to_proto(7, entry.canonical_bytes())
    assert msg == wire.entry_to_proto(entry)
    with pytest.raises(Refused):
        wire.entry_bytes_to_proto(8, entry.canonical_bytes())


def test_submit_response_carries_receipt_or_refusal() -> None:
    """A Submit stream answer decodes to the receipt or the refusal it carries."""
    receipt = Receipt("ICBC", "pay-1", bytes(32), Outcome.SETTLED, 3)
    refusal = Refused(Reason.ACCOUNT_FROZEN, "account ICBC/CNY is frozen")
    assert wire.submit_result_from_proto(wire.submit_response_to_proto(1, receipt)) == receipt
    back = wire.submit_result_from_proto(wire.submit_response_to_proto(2, refusal))
    assert isinstance(back, Refused)
    assert (back.reason, back.message) == (refusal.reason, refusal.message)
    empty = wire.submit_result_from_proto(bridge_pb.SubmitResponse(correlation_id=3))
    assert isinstance(empty, Refused)
    assert empty.reason is Reason.MALFORMED


def test_refusal_with_unknown_reason_reads_as_malformed() -> None:
    """A reason code from a newer peer does not crash the decoder."""
    back = wire.refusal_from_proto(pb.Refusal(code="ABORTED", reason="NEW_REASON", message="m"))
    assert back.reason is Reason.MALFORMED
    assert "NEW_REASON" in back.message


# ---------------------------------------------------------------------------- refusals


def test_missing_instruction_is_malformed() -> None:
    """A signed instruction without its instruction is refused."""
    assert refusal_of(pb.SignedInstruction()).reason is Reason.MALFORMED


def test_missing_body_is_malformed() -> None:
    """An instruction with no oneof body set (or one unknown to this version) is refused."""
    msg = pay_proto()
    msg.instruction.ClearField("pay")
    assert msg.instruction.WhichOneof("body") is None
    assert refusal_of(msg).reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payee": ""}, Reason.MALFORMED),
        ({"payee": "bad id!"}, Reason.MALFORMED),
        ({"currency": "cny"}, Reason.MALFORMED),
        ({"currency": ""}, Reason.MALFORMED),
        ({"reference": "x" * 141}, Reason.FIELD_TOO_LONG),
        ({"reference": "line\nbreak"}, Reason.MALFORMED),
        ({"amount": 0}, Reason.NON_POSITIVE_AMOUNT),
        ({"amount": -5}, Reason.NON_POSITIVE_AMOUNT),
        ({"amount": -(2**63)}, Reason.NON_POSITIVE_AMOUNT),
        ({"payee": "ICBC"}, Reason.SAME_PARTY),
    ],
)
def test_bad_pay_fields_are_refused_by_domain_validation(
    change: dict[str, object], reason: Reason
) -> None:
    """Field values the domain rejects are refused when decoded, with the domain's reason."""
    assert refusal_of(pay_proto(**change)).reason is reason


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m.instruction, "instruction_id", ""), Reason.MALFORMED),
        (lambda m: setattr(m.instruction, "sender", ""), Reason.MALFORMED),
        (lambda m: setattr(m.instruction, "valid_until", -1), Reason.INVALID_TIME),
        (lambda m: setattr(m.instruction, "valid_until", 0), Reason.INVALID_TIME),
        (lambda m: setattr(m.instruction, "signed_at", 0), Reason.INVALID_TIME),
        (lambda m: setattr(m.instruction, "signed_at", -1), Reason.INVALID_TIME),
        (lambda m: setattr(m.instruction, "signed_at", T + 1), Reason.INVALID_TIME),
        (lambda m: m.signatures.add(signer="", value=SIG), Reason.MALFORMED),
        (lambda m: m.signatures.add(signer="ICBC", value=b""), Reason.MALFORMED),
    ],
    ids=[
        "no-id",
        "no-sender",
        "negative-valid-until",
        "zero-valid-until",
        "unset-signed-at",
        "negative-signed-at",
        "signed-after-valid-until",
        "unnamed-signer",
        "empty-signature",
    ],
)
def test_bad_header_or_signature_is_refused(
    mutate: Callable[[pb.SignedInstruction], object], reason: Reason
) -> None:
    """Header fields and signatures are checked too (out-of-range times as the domain says)."""
    msg = pay_proto()
    mutate(msg)
    assert refusal_of(msg).reason is reason


def test_unspecified_or_unknown_status_is_malformed() -> None:
    """A participant status left unset, or unknown to this version, is refused."""
    msg = wire.envelope_to_proto(envelope_of(SAMPLES[1]))
    msg.instruction.set_status.status = pb.PARTICIPANT_STATUS_UNSPECIFIED
    assert refusal_of(msg).reason is Reason.MALFORMED
    msg.instruction.set_status.status = pb.ParticipantStatus.ValueType(7)
    assert refusal_of(msg).reason is Reason.MALFORMED


def test_short_public_key_is_malformed() -> None:
    """An admission must carry a 65-byte SEC1 public key."""
    msg = wire.envelope_to_proto(envelope_of(SAMPLES[0]))
    msg.instruction.admit_bank.public_key = KEY[:33]
    assert refusal_of(msg).reason is Reason.MALFORMED


def test_bad_terms_hash_and_rate_are_malformed() -> None:
    """PvP terms must be well formed: hex terms hash, positive decimal rate."""
    msg = wire.envelope_to_proto(envelope_of(SAMPLES[13]))
    msg.instruction.pvp_accept.terms_hash = PROPOSAL.terms_hash().upper()
    assert refusal_of(msg).reason is Reason.MALFORMED
    msg = wire.envelope_to_proto(envelope_of(PROPOSAL))
    msg.instruction.pvp_propose.rate = "-4.85"
    assert refusal_of(msg).reason is Reason.MALFORMED


def test_protobuf_refuses_amounts_past_int64_at_the_client() -> None:
    """Protobuf itself refuses an amount that does not fit int64."""
    with pytest.raises(ValueError, match="out of range"):
        pb.Pay(amount=INT64_MAX + 1)


def test_encoding_an_amount_past_int64_is_refused_as_overflow() -> None:
    """An SDK encoding a too-large amount gets the domain's AMOUNT_OVERFLOW, not a crash."""
    body = Pay("pay-9", "ICBC", T, "KBANK", "CNY", INT64_MAX + 1, signed_at=T - 5_000)
    with pytest.raises(Refused) as caught:
        wire.envelope_to_proto(Envelope.of(body))
    assert caught.value.reason is Reason.AMOUNT_OVERFLOW


def test_encoding_an_unknown_status_is_malformed() -> None:
    """A status string the domain does not know cannot be put on the wire."""
    with pytest.raises(Refused) as caught:
        wire.instruction_to_proto(
            SetParticipantStatus("st-9", "PBOC", T, "ICBC", "closed", signed_at=T - 5_000)
        )
    assert caught.value.reason is Reason.MALFORMED


def test_entry_with_mismatched_canonical_bytes_is_malformed() -> None:
    """An entry whose canonical bytes disagree with its fields is refused."""
    msg = wire.entry_to_proto(Entry(7, T, envelope_of(PROPOSAL), Outcome.HELD))
    msg.canonical = msg.canonical.replace(b'"seq":7', b'"seq":8')
    with pytest.raises(Refused) as caught:
        wire.entry_from_proto(msg)
    assert caught.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "msg",
    [
        pb.SettlementEntry(seq=1, outcome=pb.OUTCOME_SETTLED),
        pb.SettlementEntry(
            seq=0,
            signed=wire.envelope_to_proto(envelope_of(SAMPLES[9])),
            outcome=pb.OUTCOME_SETTLED,
        ),
        pb.SettlementEntry(seq=1, signed=wire.envelope_to_proto(envelope_of(SAMPLES[9]))),
    ],
    ids=["no-instruction", "zero-seq", "unspecified-outcome"],
)
def test_incomplete_entry_is_malformed(msg: pb.SettlementEntry) -> None:
    """Entries need an instruction, a positive seq and a known outcome."""
    with pytest.raises(Refused) as caught:
        wire.entry_from_proto(msg)
    assert caught.value.reason is Reason.MALFORMED


def test_receipt_with_bad_hash_or_outcome_is_malformed() -> None:
    """Receipts carry a 32-byte body hash and a known outcome."""
    good = wire.receipt_to_proto(Receipt("ICBC", "pay-1", bytes(32), Outcome.SETTLED, 1))
    for change in ({"body_hash": bytes(31)}, {"outcome": pb.OUTCOME_UNSPECIFIED}, {"seq": 0}):
        msg = pb.Receipt()
        msg.CopyFrom(good)
        for name, value in change.items():
            setattr(msg, name, value)
        with pytest.raises(Refused) as caught:
            wire.receipt_from_proto(msg)
        assert caught.value.reason is Reason.MALFORMED, change


def test_block_header_and_attestation_checks() -> None:
    """Block headers and attestations need positive heights and 32-byte hashes."""
    with pytest.raises(Refused):
        wire.block_from_proto(pb.Block())
    with pytest.raises(Refused):
        wire.header_from_proto(
            pb.BlockHeader(height=1, first_seq=1, entry_count=1, prev_hash=bytes(32))
        )
    with pytest.raises(Refused):
        wire.attestation_from_proto(
            pb.Attestation(height=1, block_hash=bytes(32), central_bank="PBOC")
        )
    ok = pb.Attestation(height=1, block_hash=bytes(32), central_bank="PBOC", signature=SIG)
    assert wire.attestation_from_proto(ok) == Attestation(1, bytes(32), "PBOC", SIG)


def test_genesis_with_wrong_hash_is_malformed() -> None:
    """A genesis whose stated hash is not the hash of its fields is refused."""
    msg = wire.genesis_to_proto(
        Genesis("mbridge-test", (GenesisBank("PBOC", "CN", KEY, "CNY", 2),), 1)
    )
    msg.quorum = 2
    with pytest.raises(Refused) as caught:
        wire.genesis_from_proto(msg)
    assert caught.value.reason is Reason.MALFORMED


def test_participant_with_unspecified_kind_is_malformed() -> None:
    """Participants need a known kind and status."""
    with pytest.raises(Refused):
        wire.participant_from_proto(pb.Participant(id="ICBC", status=pb.PARTICIPANT_STATUS_ACTIVE))
    with pytest.raises(Refused):
        wire.participant_from_proto(
            pb.Participant(id="ICBC", kind=pb.PARTICIPANT_KIND_CENTRAL_BANK)
        )


# ---------------------------------------------------------------------------- query signing


def test_query_message_leaves_out_only_the_signature() -> None:
    """The bytes to sign are the domain tag, the method and the request minus its signature."""
    query = cb.PvpQuery(auth=pb.RequestAuth(requester="ICBC", timestamp=T), pvp_id="fx-1")
    expected = (
        QUERY_DOMAIN
        + b"/bridge.v1.CentralBank/GetPvp\x00"
        + b'{"auth":{"requester":"ICBC","timestamp":"%d"},"pvp_id":"fx-1"}' % T
    )
    assert wire.query_message("/bridge.v1.CentralBank/GetPvp", query) == expected
    query.auth.signature = SIG
    assert wire.query_message("/bridge.v1.CentralBank/GetPvp", query) == expected


def test_query_message_binds_method_and_fields() -> None:
    """Changing the method or any queried field changes the bytes to sign."""
    query = cb.BalancesQuery(auth=pb.RequestAuth(requester="ICBC", timestamp=T), currency="CNY")
    message = wire.query_message("/bridge.v1.CentralBank/GetBalances", query)
    signed = cb.BalancesQuery()
    signed.CopyFrom(query)
    signed.auth.signature = SIG
    assert wire.query_message("/bridge.v1.CentralBank/GetBalances", signed) == message
    assert wire.query_message("/bridge.v1.CentralBank/GetHistory", query) != message
    other = cb.BalancesQuery(auth=pb.RequestAuth(requester="ICBC", timestamp=T), currency="THB")
    assert wire.query_message("/bridge.v1.CentralBank/GetBalances", other) != message
    later = cb.BalancesQuery(auth=pb.RequestAuth(requester="ICBC", timestamp=T + 1), currency="CNY")
    assert wire.query_message("/bridge.v1.CentralBank/GetBalances", later) != message


def test_all_is_sorted() -> None:
    """The public names of bridge.wire are listed once, sorted."""
    assert wire.__all__ == sorted(set(wire.__all__))
    assert all(hasattr(wire, name) for name in wire.__all__)
