"""The bounds check compiled per message type gives the generic pass's verdict on any request.

`check_message` runs, per message type, a check written out once from the descriptor and the
bounds tables (`compiled_check`) instead of the generic pass over `ListFields()` (`_within`);
the refusal of a message it says no to is still named by the generic walk (`_walk`). Arbitrary
messages of every request type of every service (each field unset, inside, at or past its
bound, sub-messages and oneof members to a few levels, lists at and past their bound) must get
the same verdict from the compiled check, the generic pass and the walk.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import (
    ELEMENT_BOUNDS,
    FIELD_BOUNDS,
    INT_BOUNDS,
    Bound,
    _walk,
    _within,
    check_message,
    compiled_check,
)
from bridge.errors import Refused

REQUEST_TYPES: list[Descriptor] = sorted(
    {
        method.input_type.full_name: method.input_type
        for module in (bridge_pb, cb_pb)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }.values(),
    key=lambda descriptor: descriptor.full_name,
)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_ID_LIKE = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,4}", fullmatch=True)


def _edge_text(limit: int) -> st.SearchStrategy[str]:
    """Strings at and just past `limit` characters, in and out of every character set."""
    near = st.integers(max(0, limit - 1), limit + 1)
    return st.one_of(
        st.text(max_size=8),
        st.text(alphabet="aB7 \n\t\x00é.-", max_size=6),
        st.sampled_from(["CNY", "HK", "1.08", "0f3a", "ab\n", "é", "-x", ".", "a b"]),
        near.map(lambda n: "A" * n),
        near.map(lambda n: "7" * n),
    )


def _good_text(bound: Bound | None) -> st.SearchStrategy[str]:
    """Strings within `bound` (length and character set)."""
    if bound is None:
        return st.text(max_size=8)
    if bound.pattern is not None:
        most = bound.max_length
        return st.from_regex(bound.pattern, fullmatch=True).filter(lambda v: len(v) <= most)
    alphabet = "aB7 /-.é" if bound.printable else "aB7 \n\x00é"
    return st.text(alphabet=alphabet, max_size=min(8, bound.max_length))


def _integer(fd: FieldDescriptor, good: bool) -> st.SearchStrategy[int]:
    """Integers of the field's type: within its bound, or its edges and anything else."""
    low, high = _INT_RANGES.get(fd.type, (0, 1))
    bound = INT_BOUNDS.get(fd.name)
    if good:
        if bound is not None:
            low, high = max(low, bound.low), min(high, bound.high)
        return st.integers(low, high)
    edges = [0, 1, -1, low, high]
    if bound is not None:
        edges += [bound.low - 1, bound.low, bound.high, bound.high + 1]
    return st.sampled_from([edge for edge in edges if low <= edge <= high])


def _scalar(draw: st.DrawFn, fd: FieldDescriptor, bound_name: str, table: dict[str, Bound]) -> Any:
    """One value of a scalar field (or an element of a repeated one): mostly within its
    bound, so that one field out of bounds is not hidden by another."""
    bound = table.get(bound_name)
    good = draw(st.integers(0, 7)) > 0
    if fd.type == FieldDescriptor.TYPE_STRING:
        limit = bound.max_length if bound is not None else 8
        return draw(_good_text(bound) if good else _edge_text(limit))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        limit = bound.max_length if bound is not None else 8
        sizes = st.integers(0, min(8, limit)) if good else st.integers(limit - 1, limit + 1)
        return bytes(draw(sizes))
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        return draw(st.sampled_from([value.number for value in fd.enum_type.values]))
    return draw(_integer(fd, good))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 4) -> Message:
    """An arbitrary message of `descriptor`'s type, each field unset or set near its bound."""
    message: Message = message_factory.GetMessageClass(descriptor)()
    chosen = {  # at most one member of each oneof, any of them equally likely
        oneof.name: draw(st.sampled_from([None, *(fd.name for fd in oneof.fields)]))
        for oneof in descriptor.oneofs
    }
    for fd in descriptor.fields:
        oneof = fd.containing_oneof
        if oneof is not None and chosen[oneof.name] != fd.name:
            continue
        if oneof is None and draw(st.integers(0, 3)) == 0:
            continue
        target = getattr(message, fd.name)
        if fd.message_type is not None:
            if depth == 0:
                continue
            if fd.is_repeated:
                items = draw(st.lists(messages(fd.message_type, depth - 1), max_size=2))
                limit = FIELD_BOUNDS[fd.name].max_length
                if items and draw(st.integers(0, 7)) == 0:  # at or just past the list's bound
                    items += items[:1] * (draw(st.integers(limit - 1, limit + 1)) - len(items))
                target.extend(items)
            else:
                target.CopyFrom(draw(messages(fd.message_type, depth - 1)))
        elif fd.is_repeated:
            items = [
                _scalar(draw, fd, fd.name, ELEMENT_BOUNDS) for _ in range(draw(st.integers(0, 3)))
            ]
            limit = FIELD_BOUNDS[fd.name].max_length
            if items and draw(st.integers(0, 7)) == 0:
                items += items[:1] * (draw(st.integers(limit - 1, limit + 1)) - len(items))
            target.extend(items)
        else:
            setattr(message, fd.name, _scalar(draw, fd, fd.name, FIELD_BOUNDS))
    return message


def _walk_refuses(message: Message) -> bool:
    try:
        _walk(message, "")
    except Refused:
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(  # every request type, and half the time a signed instruction (most fields)
        st.sampled_from(REQUEST_TYPES), st.just(types.SignedInstruction.DESCRIPTOR)
    ).flatmap(messages)
)
def test_the_compiled_check_gives_the_generic_verdict(message: Message) -> None:
    """Every request type: the compiled check passes a message exactly when `_within` and the
    naming walk do, and `check_message` refuses exactly those."""
    verdict = compiled_check(cast(Descriptor, message.DESCRIPTOR))(message)
    assert verdict is _within(message)
    assert verdict is not _walk_refuses(message)
    try:
        check_message(message)
    except Refused:
        assert not verdict
    else:
        assert verdict


def _reached(roots: list[Descriptor]) -> list[Descriptor]:
    """Every message type the request types reach, each once."""
    seen: dict[str, Descriptor] = {}
    pending = list(roots)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name not in seen:
            seen[descriptor.full_name] = descriptor
            pending.extend(fd.message_type for fd in descriptor.fields if fd.message_type)
    return sorted(seen.values(), key=lambda descriptor: descriptor.full_name)


def _edges(fd: FieldDescriptor) -> list[Any]:
    """Values of one field at, inside and past its bound and character set."""
    if fd.message_type is not None:
        if not fd.is_repeated:
            return []
        limit = FIELD_BOUNDS[fd.name].max_length
        empty = message_factory.GetMessageClass(fd.message_type)()
        return [[empty] * limit, [empty] * (limit + 1)]
    texts: list[Any]
    if fd.type == FieldDescriptor.TYPE_STRING:
        bound = (ELEMENT_BOUNDS if fd.is_repeated else FIELD_BOUNDS)[fd.name]
        most = bound.max_length
        texts = ["", "a", "AB", "CNY", "1.08", "0f", "-x", "a.b", "a b", "a\n", "é", "A" * most]
        texts += ["A" * (most + 1), "7" * most, "7" * (most + 1)]
    elif fd.type == FieldDescriptor.TYPE_BYTES:
        most = (ELEMENT_BOUNDS if fd.is_repeated else FIELD_BOUNDS)[fd.name].max_length
        texts = [b"", b"\x00", bytes(most), bytes(most + 1)]
    else:
        low, high = _INT_RANGES.get(fd.type, (0, 1))
        edges = [0, 1, -1, low, high]
        int_bound = INT_BOUNDS.get(fd.name)
        if int_bound is not None:
            edges += [int_bound.low - 1, int_bound.low, int_bound.high, int_bound.high + 1]
        return [] if fd.is_repeated else [edge for edge in edges if low <= edge <= high]
    if not fd.is_repeated:
        return texts
    limit = FIELD_BOUNDS[fd.name].max_length
    return [[text] for text in texts] + [[texts[0]] * limit, [texts[0]] * (limit + 1)]


def test_every_bounded_field_at_its_edges_gets_the_generic_verdict() -> None:
    """Each field of each message type a request reaches, set alone to values at, inside and
    past its bound, gets the same verdict from the compiled check and the generic pass."""
    compared = refused = 0
    for descriptor in _reached(REQUEST_TYPES):
        fits = compiled_check(descriptor)
        for fd in descriptor.fields:
            for value in _edges(fd):
                message = message_factory.GetMessageClass(descriptor)()
                if fd.is_repeated:
                    getattr(message, fd.name).extend(value)
                else:
                    setattr(message, fd.name, value)
                verdict = fits(message)
                assert verdict is _within(message), (descriptor.full_name, fd.name, value)
                compared += 1
                refused += not verdict
    assert compared > 500  # every kind of field was reached, inside and past its bound
    assert refused > 200
