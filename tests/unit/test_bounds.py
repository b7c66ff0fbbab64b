"""The field bounds table and the raw-bytes helpers of the request guard."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from bridge import bounds
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import check_message, preview, unbounded_fields
from bridge.errors import Reason, Refused
from bridge.node.request_guard import correlation_id_of

SERVICES: list[ServiceDescriptor] = [
    *bridge_pb.DESCRIPTOR.services_by_name.values(),
    *cb_pb.DESCRIPTOR.services_by_name.values(),
]


def reason_of(message: object) -> Reason | None:
    try:
        check_message(message)  # type: ignore[arg-type]
    except Refused as refusal:
        return refusal.reason
    return None


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_request_field_has_a_bound(service: ServiceDescriptor) -> None:
    """Every string, bytes and repeated field a request can carry has a documented bound."""
    for method in service.methods:
        assert unbounded_fields(method.input_type) == [], method.full_name


def test_preview_quotes_sixteen_characters_at_most() -> None:
    """A refusal quotes 16 characters of client input, then an ellipsis."""
    assert preview("a" * 5_000_000) == "'" + "a" * 16 + "'…"
    assert preview("short") == "'short'"
    assert preview(b"\x01" * 100) == "01" * 8 + "…"


def test_legitimate_ids_pass() -> None:
    """Ids the SDK, the node and the demos generate are within bounds."""
    for instruction_id in (
        "5c91b4e0a289455f86449b959bbacb39",
        "issue-HSBCHK-" + "f" * 32,
        "loadtest-fund-CB00B01",
        "demo-retry-1",
        "a" * 64,
        "expire-" + "0" * 40,
    ):
        request = bridge_pb.GetReceiptRequest(sender="HSBCHK", instruction_id=instruction_id)
        assert reason_of(request) is None, instruction_id


@pytest.mark.parametrize(
    ("request_message", "reason"),
    [
        (bridge_pb.GetReceiptRequest(instruction_id="a" * 65), Reason.FIELD_TOO_LONG),
        (bridge_pb.GetReceiptRequest(instruction_id="-dash"), Reason.MALFORMED),
        (bridge_pb.GetReceiptRequest(sender="ICBC CN"), Reason.MALFORMED),
        (types.CurrencySupplyRequest(currency="cny"), Reason.MALFORMED),
        (cb_pb.HistoryQuery(limit=-1), Reason.BAD_PAGE_SIZE),
        (cb_pb.HistoryQuery(limit=501), Reason.BAD_PAGE_SIZE),
        (cb_pb.HistoryQuery(from_seq=-1), Reason.MALFORMED),
        (cb_pb.IssuanceRequest(valid_until=-1), Reason.INVALID_TIME),
        (cb_pb.IssuanceRequest(request_id="r" * 57), Reason.FIELD_TOO_LONG),
        (types.Attestation(block_hash=b"\x00" * 33), Reason.FIELD_TOO_LONG),
        (types.Signature(value=b"\x00" * 72), None),
        (types.Signature(value=b"\x00" * 73), Reason.FIELD_TOO_LONG),
        (types.CurrencySupplyRequest(currency="CNYX"), Reason.MALFORMED),
        (
            types.SignedInstruction(signatures=[types.Signature(signer="A")] * 5),
            Reason.FIELD_TOO_LONG,
        ),
        (
            types.SignedInstruction(
                instruction=types.Instruction(pay=types.Pay(reference="line\nbreak"))
            ),
            Reason.MALFORMED,
        ),
        (
            types.SignedInstruction(
                instruction=types.Instruction(pay=types.Pay(reference="R" * 141))
            ),
            Reason.FIELD_TOO_LONG,
        ),
        (
            types.SignedInstruction(
                instruction=types.Instruction(
                    set_policy=types.SetPolicy(allowed_jurisdictions=["CNN"])
                )
            ),
            Reason.MALFORMED,
        ),
        (cb_pb.HistoryQuery(limit=500), None),
        (cb_pb.HistoryQuery(limit=0), None),
    ],
)
def test_out_of_bounds_fields_are_refused(request_message: object, reason: Reason | None) -> None:
    """Each field out of its bound is refused with its reason; values in bounds pass."""
    assert reason_of(request_message) is reason


def test_refusal_names_the_nested_field() -> None:
    """The refusal names where the field is, e.g. instruction.pay.reference."""
    message = types.SignedInstruction(
        instruction=types.Instruction(pay=types.Pay(reference="R" * 200))
    )
    with pytest.raises(Refused) as caught:
        check_message(message)
    assert caught.value.message.startswith("instruction.pay.reference: at most 140 characters")


def _forwarded_batch(reference: str = "B/L COSU6182736450") -> bridge_pb.SubmitRequest:
    """A central bank node's Submit message: two endorsed dual-signed PvPs."""
    pvp = types.DualPvp(
        counterparty="HSBCHK",
        pay_currency="CNY",
        pay_amount=700_000,
        receive_currency="HKD",
        receive_amount=756_000,
        rate="1.08",
        reference=reference,
    )
    signatures = [
        types.Signature(signer="ICBC", value=b"\x01" * 64),
        types.Signature(signer="HSBCHK", value=b"\x02" * 64),
        types.Signature(
            signer="PBOC",
            value=b"\x03" * 64,
            endorses="ICBC",
            batch_size=2,
            batch_path=[b"\x04" * 32],
        ),
    ]
    items = [
        bridge_pb.SubmitRequest(
            correlation_id=index + 1,
            timeout_ms=5000,
            instruction=types.SignedInstruction(
                instruction=types.Instruction(
                    instruction_id=f"dual-ICBC-{index}",
                    sender="ICBC",
                    valid_until=1_764_657_000_000,
                    signed_at=1_764_656_000_000,
                    pvp_dual=pvp,
                ),
                signatures=signatures,
            ),
        )
        for index in range(2)
    ]
    return bridge_pb.SubmitRequest(batch=items)


def test_a_forwarded_batch_is_checked_without_the_generic_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request within bounds is checked by its type's compiled check, not by the generic
    pass over ListFields(); one out of bounds is still refused naming the nested field."""

    def generic(message: object) -> bool:
        raise AssertionError("the generic pass ran")

    monkeypatch.setattr(bounds, "_within", generic)
    check_message(_forwarded_batch())  # no AssertionError: the compiled check alone
    with pytest.raises(Refused) as caught:
        check_message(_forwarded_batch(reference="a\nb"))
    assert caught.value.reason is Reason.MALFORMED
    assert caught.value.message == (
        "batch[0].instruction.instruction.pvp_dual.reference: printable characters only, "
        "got 'a\\nb'"
    )


def test_correlation_id_is_read_from_a_message_that_does_not_decode() -> None:
    """The correlation id of a stream message is read even when the rest is corrupt."""
    encoded = bridge_pb.SubmitRequest(
        correlation_id=300, instruction=types.SignedInstruction()
    ).SerializeToString()
    assert correlation_id_of(encoded + b"\x12\x05\xff") == 300
    assert correlation_id_of(b"\x12\x02\xc3\x28\x08\x07") == 7  # after another field
    assert correlation_id_of(b"\xff\xff\xff") is None
    assert correlation_id_of(b"\x08" + b"\xff" * 10 + b"\x01") is None  # over-long varint
    assert correlation_id_of(b"\x12\x0a\x01") is None  # truncated, no id


def _request_type(
    package: str, *, oneof_flag: bool = False, reference: bool = False
) -> type[Message]:
    """A request type of its own descriptor pool: a bounded `sender` in a nested message, with
    a flag beside it in a oneof, and a top-level `reference` if asked."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto", package=package, syntax="proto3"
    )
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="sender", number=1, type=_STRING, label=_OPTIONAL)
    request = file.message_type.add(name="Req")
    request.oneof_decl.add(name="choice")
    nested = request.field.add(
        name="inner", number=2, type=_MESSAGE, label=_OPTIONAL, type_name=f".{package}.Inner"
    )
    nested.oneof_index = 0
    if oneof_flag:
        flag = request.field.add(name="flag", number=1, type=_BOOL, label=_OPTIONAL)
        flag.oneof_index = 0
    if reference:
        request.field.add(name="reference", number=3, type=_STRING, label=_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    message_class: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.Req")
    )
    return message_class


_STRING, _BOOL, _MESSAGE = 9, 8, 11  # FieldDescriptorProto.Type
_OPTIONAL = 1  # FieldDescriptorProto.Label


def test_a_oneof_member_with_nothing_to_check_passes_the_compiled_check() -> None:
    """A flag set in a oneof beside a message member passes (the compiled check once raised
    KeyError for a member it had no check for), and the message member is still checked."""
    request_type = _request_type("bounds_oneof", oneof_flag=True)
    check_message(request_type(flag=True))
    with pytest.raises(Refused) as refused:
        check_message(request_type(inner={"sender": "x" * 500}))
    assert refused.value.reason is Reason.FIELD_TOO_LONG


def test_types_of_the_same_name_in_two_descriptor_pools_get_their_own_checks() -> None:
    """A type compiled first does not stand for another pool's type of the same full name:
    the second type's own bounded field is still checked."""
    plain = _request_type("bounds_pools")
    with_reference = _request_type("bounds_pools", reference=True)
    check_message(plain(inner={"sender": "ICBC"}))
    with pytest.raises(Refused) as refused:
        check_message(with_reference(reference="x" * 500))
    assert refused.value.reason is Reason.FIELD_TOO_LONG
