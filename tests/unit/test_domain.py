"""Domain values: canonical encoding, instruction parsing and shape validation."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import (
    ENDORSEMENT_DOMAIN,
    INSTRUCTION_DOMAIN,
    INSTRUCTION_TYPES,
    INT64_MAX,
    MAX_REFERENCE_LENGTH,
    AcceptPvp,
    AdmitBank,
    CancelPvp,
    DualPvp,
    Entry,
    Envelope,
    ExpirePvp,
    FreezeAccount,
    Genesis,
    Instruction,
    Issue,
    Leg,
    Outcome,
    Pay,
    ProposePvp,
    Redeem,
    RejectPvp,
    SetParticipantStatus,
    SetPolicy,
    Signature,
    canonical_json,
    endorsement_message,
    envelope_endorsement_message,
    instruction_from_fields,
    party_message,
    validate_shape,
)
from bridge.errors import STATUS_OF_REASON, Reason, Refused
from tests.factories import T0, network, sign

UNTIL = T0 + 60_000
SIGNED = T0 - 1_000
KEY = bytes([4]) + bytes(range(64))
TERMS = "ab" * 32


def samples() -> list[Instruction]:
    """One valid instruction of every kind."""
    proposal = ProposePvp(
        "pvp-1", "ICBC", UNTIL, "BOCHK", "CNY", 100_000, "HKD", 108_500, "1.085", T0 + 3_600_000,
        "INV-2025-0042 Chongqing-Singapore rail", signed_at=SIGNED,
    )  # fmt: skip
    return [
        AdmitBank("adm-1", "PBOC", UNTIL, "ICBC", KEY, signed_at=SIGNED),
        SetParticipantStatus("st-1", "PBOC", UNTIL, "ICBC", "suspended", signed_at=SIGNED),
        SetPolicy("pol-1", "PBOC", UNTIL, 1_000_000, 5_000_000, ("HK", "TH"), signed_at=SIGNED),
        FreezeAccount("frz-1", "PBOC", UNTIL, "ICBC", "CNY", True, signed_at=SIGNED),
        Issue("iss-1", "PBOC", UNTIL, "ICBC", "CNY", 10**12, signed_at=SIGNED),
        Redeem("red-1", "ICBC", UNTIL, "CNY", 500, signed_at=SIGNED),
        Pay("pay-1", "ICBC", UNTIL, "CCB", "CNY", 12_345, "B/L COSU6331847120", signed_at=SIGNED),
        proposal,
        AcceptPvp(
            "acc-1", "BOCHK", UNTIL, "ICBC", "pvp-1", proposal.terms_hash(), signed_at=SIGNED
        ),
        RejectPvp("rej-1", "BOCHK", UNTIL, "ICBC", "pvp-1", signed_at=SIGNED),
        CancelPvp("can-1", "ICBC", UNTIL, "pvp-1", signed_at=SIGNED),
        ExpirePvp("expire-0123", "bridge", UNTIL, "ICBC", "pvp-1", signed_at=SIGNED),
        DualPvp(
            "dual-1",
            "KBANK",
            UNTIL,
            "ENBD",
            "THB",
            1_000_000,
            "AED",
            104_000,
            "0.104",
            signed_at=SIGNED,
        ),
    ]


def sample_fields(kind: str) -> dict[str, Any]:
    return next(s for s in samples() if kind == s.KIND).to_fields()


# ---------------------------------------------------------------------------- canonical json


def test_canonical_json_sorts_keys_and_is_compact() -> None:
    """Keys are sorted at every depth and no whitespace is emitted."""
    encoded = canonical_json({"b": 1, "a": {"z": [1, 2], "y": "x"}})
    assert encoded == b'{"a":{"y":"x","z":[1,2]},"b":1}'


def test_canonical_json_is_independent_of_insertion_order() -> None:
    """The same mapping in any insertion order encodes to the same bytes."""
    forward = {str(i): i for i in range(50)}
    backward = dict(reversed(list(forward.items())))
    assert canonical_json(forward) == canonical_json(backward)


def test_canonical_json_is_ascii_only() -> None:
    """Non-ASCII text is escaped so the encoding is pure ASCII."""
    encoded = canonical_json({"reference": "重庆→新加坡"})
    assert encoded.isascii()
    assert json.loads(encoded) == {"reference": "重庆→新加坡"}


def test_canonical_json_keeps_big_integers_exact() -> None:
    """Integers are written as integers, never as floats, even at int64 max."""
    assert canonical_json({"amount": INT64_MAX}) == b'{"amount":9223372036854775807}'


def test_instruction_canonical_bytes_are_sorted_and_deterministic() -> None:
    """Every instruction's canonical body is sorted JSON, equal across calls and copies."""
    for instruction in samples():
        encoded = instruction.canonical_bytes()
        assert encoded == replace(instruction).canonical_bytes()
        decoded = json.loads(encoded)
        assert list(decoded) == sorted(decoded)
        assert decoded["kind"] == instruction.KIND
        assert canonical_json(decoded) == encoded


def test_bytes_fields_are_lower_case_hex() -> None:
    """A public key is encoded as lower-case hex in the canonical body."""
    fields = AdmitBank("adm-1", "PBOC", UNTIL, "ICBC", b"\xab" * 65).to_fields()
    assert fields["public_key"] == "ab" * 65


def test_samples_cover_every_instruction_kind() -> None:
    """The round-trip samples include one instruction of each registered kind."""
    assert sorted(s.KIND for s in samples()) == sorted(INSTRUCTION_TYPES)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("instruction", samples(), ids=lambda i: i.KIND)
def test_instruction_from_fields_round_trips(instruction: Instruction) -> None:
    """Every kind rebuilds from its canonical fields into an equal instruction."""
    rebuilt = instruction_from_fields(json.loads(instruction.canonical_bytes()))
    assert rebuilt == instruction
    assert type(rebuilt) is type(instruction)
    assert rebuilt.canonical_bytes() == instruction.canonical_bytes()


@pytest.mark.parametrize("instruction", samples(), ids=lambda i: i.KIND)
def test_entry_canonical_bytes_round_trip(instruction: Instruction) -> None:
    """An entry's canonical bytes parse back into an equal entry with identical bytes."""
    signatures = (Signature("ICBC", b"\x01" * 64), Signature("PBOC", b"\x02" * 64, "ICBC"))
    entry = Entry(7, T0, Envelope.of(instruction, signatures), Outcome.SETTLED)
    encoded = entry.canonical_bytes()
    parsed = Entry.from_canonical_bytes(encoded)
    assert parsed == entry
    assert parsed.envelope.body_bytes == entry.envelope.body_bytes
    assert parsed.canonical_bytes() == encoded
    assert canonical_json(json.loads(encoded)) == encoded


def test_entry_in_non_canonical_encoding_is_refused() -> None:
    """An entry re-serialised with whitespace is refused as MALFORMED."""
    entry = Entry(1, T0, Envelope.of(samples()[6]), Outcome.SETTLED)
    pretty = json.dumps(json.loads(entry.canonical_bytes()), indent=1).encode()
    with pytest.raises(Refused) as caught:
        Entry.from_canonical_bytes(pretty)
    assert caught.value.reason is Reason.MALFORMED


def test_envelope_from_fields_round_trips_signed_envelope() -> None:
    """A really signed envelope survives fields -> envelope unchanged."""
    net = network()
    envelope = sign(net, Pay("pay-rt", "ICBC", UNTIL, "BOCHK", "CNY", 5, "INV-1"))
    rebuilt = Envelope.from_fields(envelope.body.to_fields(), envelope.signatures_fields())
    assert rebuilt == envelope
    assert rebuilt.body_bytes == envelope.body_bytes


def test_genesis_round_trips_and_hash_is_stable() -> None:
    """Genesis survives to_fields/from_fields and its hash depends on its content."""
    genesis = network().genesis
    rebuilt = Genesis.from_fields(json.loads(genesis.canonical_bytes()))
    assert rebuilt == genesis
    assert rebuilt.hash() == genesis.hash()
    assert replace(genesis, quorum=2).hash() != genesis.hash()


def test_envelope_finds_party_signatures_and_endorsements() -> None:
    """party_signature skips endorsements; endorsement finds the one covering the party."""
    own = Signature("ICBC", b"\x01" * 64)
    endorsement = Signature("PBOC", b"\x02" * 64, endorses="ICBC")
    envelope = Envelope.of(samples()[6], (endorsement, own))
    assert envelope.party_signature("ICBC") == own
    assert envelope.party_signature("PBOC") is None
    assert envelope.endorsement("ICBC") == endorsement
    assert envelope.endorsement("CCB") is None


def test_signed_messages_are_domain_separated() -> None:
    """A party signature message can never equal an endorsement message of the same body."""
    body = samples()[6].canonical_bytes()
    assert party_message(body).startswith(INSTRUCTION_DOMAIN)
    alone = Signature("PBOC", b"\x02" * 64, "ICBC", 0, 1, ())
    endorsement = endorsement_message(body, b"\x01" * 64, alone)
    leaf = sha256(b"\x00" + (64).to_bytes(2, "big") + b"\x01" * 64 + sha256(body).digest())
    assert endorsement == ENDORSEMENT_DOMAIN + (1).to_bytes(4, "big") + leaf.digest()
    assert party_message(body) != endorsement


def test_pvp_legs_and_terms_hash() -> None:
    """A proposal's legs run both ways; its terms hash changes with any term."""
    proposal = samples()[7]
    assert isinstance(proposal, ProposePvp)
    assert proposal.legs() == (
        Leg("ICBC", "BOCHK", "CNY", 100_000),
        Leg("BOCHK", "ICBC", "HKD", 108_500),
    )
    assert proposal.terms_hash() != replace(proposal, receive_amount=108_501).terms_hash()
    assert proposal.parties() == ("ICBC",)


def test_dual_pvp_requires_both_parties_and_expiry_none() -> None:
    """A dual PvP is signed by both banks; the bridge's expiry needs no party signature."""
    dual, expire = samples()[12], samples()[11]
    assert dual.parties() == ("KBANK", "ENBD")
    assert expire.parties() == ()


def test_every_reason_has_a_status_code() -> None:
    """Each refusal reason maps to one gRPC status code name."""
    assert set(STATUS_OF_REASON) == set(Reason)


# ---------------------------------------------------------------------------- malformed input


def refused_fields(data: dict[str, Any]) -> Reason:
    with pytest.raises(Refused) as caught:
        instruction_from_fields(data)
    return caught.value.reason


def test_unknown_kind_is_refused() -> None:
    """An unknown or missing kind is MALFORMED."""
    assert refused_fields(sample_fields("pay") | {"kind": "mint"}) is Reason.MALFORMED
    assert refused_fields({k: v for k, v in sample_fields("pay").items() if k != "kind"}) is (
        Reason.MALFORMED
    )
    assert refused_fields(sample_fields("pay") | {"kind": 3}) is Reason.MALFORMED


@pytest.mark.parametrize("kind", sorted(INSTRUCTION_TYPES))
def test_missing_field_is_refused(kind: str) -> None:
    """Dropping any field of any kind is MALFORMED."""
    fields = sample_fields(kind)
    for name in fields:
        if name == "kind":
            continue
        partial = {k: v for k, v in fields.items() if k != name}
        assert refused_fields(partial) is Reason.MALFORMED, name


@pytest.mark.parametrize("kind", sorted(INSTRUCTION_TYPES))
def test_extra_field_is_refused(kind: str) -> None:
    """An unexpected extra field is MALFORMED."""
    assert refused_fields(sample_fields(kind) | {"memo": "x"}) is Reason.MALFORMED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instruction_id", ""),
        ("instruction_id", "-leading-dash"),
        ("instruction_id", "has space"),
        ("instruction_id", 42),
        ("sender", "ICBC/CN"),
        ("payee", "é"),
        ("payee", None),
        ("payee", "CCB\n"),
        ("instruction_id", "pay-1\n"),
    ],
)
def test_bad_identifier_is_refused(field: str, value: object) -> None:
    """Ids must be 1-64 characters of [A-Za-z0-9._:-], not starting with punctuation."""
    assert refused_fields(sample_fields("pay") | {field: value}) is Reason.MALFORMED


def test_over_long_identifier_is_field_too_long_quoting_a_prefix() -> None:
    """An id past 64 characters is FIELD_TOO_LONG; the message quotes 16 characters at most."""
    with pytest.raises(Refused) as caught:
        instruction_from_fields(sample_fields("pay") | {"instruction_id": "x" * 5_000_000})
    assert caught.value.reason is Reason.FIELD_TOO_LONG
    assert len(caught.value.message) < 120
    assert "'xxxxxxxxxxxxxxxx'…" in caught.value.message


def test_identifier_at_maximum_length_is_accepted() -> None:
    """A 64-character id is still valid."""
    assert instruction_from_fields(sample_fields("pay") | {"instruction_id": "a" * 64})


@pytest.mark.parametrize("value", ["cny", "CN", "CNYY", "C1Y", "", 156, None, "CNY\n"])
def test_bad_currency_is_refused(value: object) -> None:
    """A currency must be three upper-case letters."""
    assert refused_fields(sample_fields("pay") | {"currency": value}) is Reason.MALFORMED


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("issue", "amount"),
        ("redeem", "amount"),
        ("pay", "amount"),
        ("pvp_propose", "pay_amount"),
        ("pvp_propose", "receive_amount"),
        ("pvp_dual", "pay_amount"),
        ("pvp_dual", "receive_amount"),
    ],
)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, Reason.NON_POSITIVE_AMOUNT),
        (-1, Reason.NON_POSITIVE_AMOUNT),
        (-(2**63), Reason.NON_POSITIVE_AMOUNT),
        (INT64_MAX + 1, Reason.AMOUNT_OVERFLOW),
        (2**64, Reason.AMOUNT_OVERFLOW),
        (10**30, Reason.AMOUNT_OVERFLOW),
        (1.0, Reason.MALFORMED),
        (1.5, Reason.MALFORMED),
        ("100", Reason.MALFORMED),
        (None, Reason.MALFORMED),
        (True, Reason.MALFORMED),
        (False, Reason.MALFORMED),
    ],
)
def test_bad_amount_is_refused(kind: str, field: str, value: object, reason: Reason) -> None:
    """Amounts are positive integers up to int64 max; floats, strings and bools are refused."""
    assert refused_fields(sample_fields(kind) | {field: value}) is reason


def test_amount_at_int64_max_is_accepted() -> None:
    """INT64_MAX itself is a valid amount."""
    assert instruction_from_fields(sample_fields("pay") | {"amount": INT64_MAX})


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("valid_until", -1, Reason.INVALID_TIME),
        ("settle_by", -(2**63), Reason.INVALID_TIME),
        ("valid_until", INT64_MAX + 1, Reason.AMOUNT_OVERFLOW),
        ("valid_until", "soon", Reason.MALFORMED),
        ("valid_until", True, Reason.MALFORMED),
        ("settle_by", 2**64, Reason.AMOUNT_OVERFLOW),
        ("settle_by", 1.0, Reason.MALFORMED),
    ],
)
def test_bad_time_is_refused(field: str, value: object, reason: Reason) -> None:
    """Times are non-negative int64 integers."""
    assert refused_fields(sample_fields("pvp_propose") | {field: value}) is reason


# ---------------------------------------------------------------------------- signing time


@pytest.mark.parametrize("instruction", samples(), ids=lambda i: i.KIND)
def test_every_kind_carries_its_signing_time_in_the_signed_body(instruction: Instruction) -> None:
    """`signed_at` is a field of every kind's canonical body, so its signatures cover it."""
    body = json.loads(instruction.canonical_bytes())
    assert body["signed_at"] == SIGNED
    later = replace(instruction, signed_at=SIGNED + 1)
    assert later.canonical_bytes() != instruction.canonical_bytes()
    assert party_message(later.canonical_bytes()) != party_message(instruction.canonical_bytes())


def test_the_encoding_doc_example_body_is_what_the_domain_writes() -> None:
    """The example body in docs/encoding.md, signing time included, is the canonical body of
    the payment it describes, byte for byte."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "encoding.md").read_text("utf-8")
    example = re.search(r'```json\n(\{"amount".*\})\n```', doc)
    assert example is not None
    pay = Pay("p1", "ICBC", 1763890000000, "BOCQ", "CNY", 12345, "INV-1", signed_at=1763889940000)
    assert example[1].encode() == pay.canonical_bytes()


@pytest.mark.parametrize(
    ("value", "reason"),
    [(-1, Reason.INVALID_TIME), ("now", Reason.MALFORMED), (1.5, Reason.MALFORMED)],
)
def test_bad_signing_time_is_refused(value: object, reason: Reason) -> None:
    """A signing time is a non-negative integer of milliseconds."""
    assert refused_fields(sample_fields("pay") | {"signed_at": value}) is reason


def test_signing_after_the_instructions_own_deadline_is_invalid_time() -> None:
    """A body signed after its own valid_until (or a proposal after its settle_by) cannot
    have been signed in time: INVALID_TIME, with both times readable in the message."""
    pay = sample_fields("pay")
    assert instruction_from_fields(pay | {"signed_at": pay["valid_until"]}).signed_at == UNTIL
    with pytest.raises(Refused) as caught:
        instruction_from_fields(pay | {"signed_at": pay["valid_until"] + 1})
    assert caught.value.reason is Reason.INVALID_TIME
    assert "valid_until" in caught.value.message
    assert "2024-10-04T" in caught.value.message
    proposal = sample_fields("pvp_propose")
    late = proposal | {"settle_by": SIGNED - 1}
    assert refused_fields(late) is Reason.INVALID_TIME
    assert instruction_from_fields(proposal | {"settle_by": SIGNED}).signed_at == SIGNED


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("per_transfer_limit", -5, Reason.AMOUNT_OVERFLOW),
        ("per_day_limit", INT64_MAX + 1, Reason.AMOUNT_OVERFLOW),
        ("per_day_limit", 1.5, Reason.MALFORMED),
        ("allowed_jurisdictions", "HK", Reason.MALFORMED),
        ("allowed_jurisdictions", ["hk"], Reason.MALFORMED),
        ("allowed_jurisdictions", ["HKG"], Reason.MALFORMED),
        ("allowed_jurisdictions", [1], Reason.MALFORMED),
        ("allowed_jurisdictions", ["HK\n"], Reason.MALFORMED),
    ],
)
def test_bad_policy_is_refused(field: str, value: object, reason: Reason) -> None:
    """Limits are non-negative int64 integers; jurisdictions a list of two-letter codes."""
    assert refused_fields(sample_fields("set_policy") | {field: value}) is reason


@pytest.mark.parametrize(
    "rate",
    [
        "0",
        "0.0",
        "0.000",
        "00.5",
        "-1",
        "1e5",
        "1,5",
        ".5",
        "1.",
        "",
        " 1",
        "1.5\n",
        "1" * 19,
        1.5,
        None,
    ],
)
def test_bad_rate_is_refused(rate: object) -> None:
    """A rate is a positive plain decimal string."""
    assert refused_fields(sample_fields("pvp_propose") | {"rate": rate}) is Reason.MALFORMED
    assert refused_fields(sample_fields("pvp_dual") | {"rate": rate}) is Reason.MALFORMED


@pytest.mark.parametrize("rate", ["1", "0.5", "7.123456789012345678", "123456789012345678"])
def test_good_rate_is_accepted(rate: str) -> None:
    """Plain positive decimals up to 18+18 digits are valid rates."""
    assert instruction_from_fields(sample_fields("pvp_propose") | {"rate": rate})


def test_over_long_reference_is_refused() -> None:
    """A reference of more than 140 characters is FIELD_TOO_LONG; 140 is fine."""
    fields = sample_fields("pay")
    assert instruction_from_fields(fields | {"reference": "R" * MAX_REFERENCE_LENGTH})
    assert refused_fields(fields | {"reference": "R" * (MAX_REFERENCE_LENGTH + 1)}) is (
        Reason.FIELD_TOO_LONG
    )


@pytest.mark.parametrize("reference", ["line\nbreak", "tab\there", "nul\x00", 42])
def test_non_printable_or_non_text_reference_is_refused(reference: object) -> None:
    """A reference must be printable text."""
    assert refused_fields(sample_fields("pay") | {"reference": reference}) is Reason.MALFORMED


def test_payment_to_self_is_refused() -> None:
    """A payment whose payee is the payer is SAME_PARTY."""
    assert refused_fields(sample_fields("pay") | {"payee": "ICBC"}) is Reason.SAME_PARTY


@pytest.mark.parametrize("kind", ["pvp_propose", "pvp_dual"])
def test_pvp_with_self_is_refused(kind: str) -> None:
    """A PvP whose counterparty is the sender is SAME_PARTY."""
    fields = sample_fields(kind)
    assert refused_fields(fields | {"counterparty": fields["sender"]}) is Reason.SAME_PARTY


@pytest.mark.parametrize("kind", ["pvp_propose", "pvp_dual"])
def test_pvp_in_one_currency_is_refused(kind: str) -> None:
    """A PvP whose two legs are in the same currency is SAME_CURRENCY."""
    fields = sample_fields(kind)
    same = fields | {"receive_currency": fields["pay_currency"]}
    assert refused_fields(same) is Reason.SAME_CURRENCY


@pytest.mark.parametrize("public_key", ["zz", "04" * 64, "04" * 66, 4, "", "04" + "00" * 64 + "0"])
def test_bad_public_key_is_refused(public_key: object) -> None:
    """An admitted bank's key must be 65 bytes of hex."""
    fields = sample_fields("admit_bank") | {"public_key": public_key}
    assert refused_fields(fields) is Reason.MALFORMED


@pytest.mark.parametrize("status", ["frozen", "ACTIVE", "", 1])
def test_bad_participant_status_is_refused(status: object) -> None:
    """A status is 'active' or 'suspended'."""
    assert refused_fields(sample_fields("set_status") | {"status": status}) is Reason.MALFORMED


@pytest.mark.parametrize("frozen", [1, 0, "true", None])
def test_non_boolean_freeze_flag_is_refused(frozen: object) -> None:
    """The freeze flag must be a JSON boolean."""
    fields = sample_fields("freeze_account") | {"frozen": frozen}
    assert refused_fields(fields) is Reason.MALFORMED


@pytest.mark.parametrize(
    "terms_hash", ["AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, "", None, "ab" * 32 + "\n", 10**63]
)
def test_bad_terms_hash_is_refused(terms_hash: object) -> None:
    """An acceptance names the proposal's terms by 64 lower-case hex digits."""
    fields = sample_fields("pvp_accept") | {"terms_hash": terms_hash}
    assert refused_fields(fields) is Reason.MALFORMED


def test_validate_shape_checks_directly_built_instructions() -> None:
    """validate_shape refuses instructions built in code, not only parsed ones."""
    pay = samples()[6]
    assert isinstance(pay, Pay)
    with pytest.raises(Refused) as caught:
        validate_shape(replace(pay, amount=-5))
    assert caught.value.reason is Reason.NON_POSITIVE_AMOUNT
    assert "-5" in caught.value.message
    validate_shape(pay)


@pytest.mark.parametrize(
    "signatures",
    [[["ICBC", "", "zz"]], [["ICBC", ""]], [[1, "", "00"]], [["ICBC", None, "00"]], ["x"]],
)
def test_malformed_stored_signatures_are_refused_as_malformed(signatures: list[Any]) -> None:
    """A stored entry whose signature list is malformed is refused MALFORMED, not a crash."""
    body = Pay("p1", "ICBC", 10, "BOCQ", "CNY", 5).to_fields()
    with pytest.raises(Refused) as refused:
        Envelope.from_fields(body, signatures)
    assert refused.value.reason is Reason.MALFORMED


def test_an_envelopes_body_hash_is_kept_and_always_that_of_its_body_bytes() -> None:
    """The body hash is SHA-256 of the body bytes on every call (worked out once), and an
    endorsement message from it is the one from the body bytes; another envelope of other
    bytes has its own."""
    net = network()
    envelope = sign(net, Pay("pay-h", "ICBC", UNTIL, "BOCHK", "CNY", 5, "INV-1"))
    digest = sha256(envelope.body_bytes).digest()
    assert envelope.body_hash() == digest
    assert envelope.body_hash() == digest
    own, endorsement = envelope.party_signature("ICBC"), envelope.endorsement("ICBC")
    assert own is not None
    assert endorsement is not None
    assert envelope_endorsement_message(envelope, own.value, endorsement) == endorsement_message(
        envelope.body_bytes, own.value, endorsement
    )
    other = Envelope(envelope.body, envelope.signatures, envelope.body_bytes + b" ")
    assert other == envelope  # bytes are not compared ...
    assert other.body_hash() == sha256(envelope.body_bytes + b" ").digest()  # ... nor shared
    assert envelope_endorsement_message(other, own.value, endorsement) != (
        envelope_endorsement_message(envelope, own.value, endorsement)
    )


@pytest.mark.parametrize(
    "change",
    [
        (b'"time":', b'"time":1E400,"x":'),  # infinity: int() of it overflows
        (b'"seq":', b'"seq":1.0,"x":'),
        (b'"seq":', b'"seq":true,"x":'),
    ],
    ids=["infinite-time", "float-seq", "boolean-seq"],
)
def test_an_entry_whose_numbers_are_not_integers_is_refused(change: tuple[bytes, bytes]) -> None:
    """An entry whose seq or time is a float, infinity or a boolean is refused as MALFORMED,
    not raised as the parser's own exception (which ended a replica's replay or `log verify`)."""
    entry = Entry(1, T0, Envelope.of(samples()[6]), Outcome.SETTLED)
    data = entry.canonical_bytes().replace(*change, 1)
    assert data != entry.canonical_bytes()
    with pytest.raises(Refused) as refused:
        Entry.from_canonical_bytes(data)
    assert refused.value.reason is Reason.MALFORMED


@pytest.mark.parametrize("data", [b"[]", b"{}", b"not json", b'{"body": 1, "sigs": []}'])
def test_bytes_that_are_not_an_entry_are_refused(data: bytes) -> None:
    """Bytes that are not an entry object at all are refused as MALFORMED."""
    with pytest.raises(Refused) as refused:
        Entry.from_canonical_bytes(data)
    assert refused.value.reason is Reason.MALFORMED
