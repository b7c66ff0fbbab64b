"""The decoder's quick ways agree with its field-by-field way, on valid and broken fields.

`instruction_from_fields` takes a body whose keys are exactly its kind's fields (and "kind"),
none of them bytes or a list, as it is; `_signatures_from_fields` builds at once a signature
whose fields have exactly the types it needs. Anything else goes the field-by-field way,
which names the refusal. Random bodies of every kind and random signature lists, valid or
changed (a key dropped, added or renamed, a value of another type, odd or upper-case hex,
booleans for integers, lists of the wrong length), must give through the quick ways the very
value, or the very refusal (reason and message), that the field-by-field way gives.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import (
    Instruction,
    Signature,
    _field_plan,
    _instruction_fields,
    _signature_from_fields,
    _signatures_from_fields,
    instruction_from_fields,
    validate_shape,
)
from bridge.errors import Refused
from tests.property.test_shape_fast_path import SAMPLES  # one of each kind

VALUES = st.one_of(
    st.integers(-3, 3),
    st.integers(10**12, 10**13),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["CNY", "ICBC", "0.11", "ab" * 32, "AB" * 32, "a", "zz", "ab cd", ""]),
    st.lists(st.sampled_from(["HK", "TH", "x", 1]), max_size=3),
)


def outcome(decode: Any) -> tuple[str, Any]:
    """What a decoding gives: ("value", the value) or ("refused", reason and message)."""
    try:
        return "value", decode()
    except Refused as refused:
        return "refused", (refused.reason.value, refused.message)


def field_by_field(data: dict[str, Any]) -> Instruction:
    """`instruction_from_fields` without its quick way (the kind is known to be valid)."""
    sample = next(s for s in SAMPLES if data["kind"] == s.KIND)
    cls = type(sample)
    instruction = cls(**_instruction_fields(cls, _field_plan(cls), data))
    validate_shape(instruction)
    return instruction


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A sample's canonical fields, as they are or with one change."""
    data = draw(st.sampled_from(SAMPLES)).to_fields()
    keys = sorted(k for k in data if k != "kind")
    how = draw(st.sampled_from(["as is", "value", "drop", "add", "rename"]))
    if how == "value":
        data[draw(st.sampled_from(keys))] = draw(VALUES)
    elif how == "drop":
        del data[draw(st.sampled_from(keys))]
    elif how == "add":
        data[draw(st.sampled_from(["extra", "outcome", "Kind"]))] = draw(VALUES)
    elif how == "rename":
        data[draw(st.sampled_from(keys)) + "_"] = data.pop(draw(st.sampled_from(keys)))
    return data


@settings(max_examples=1500, deadline=None)
@given(bodies())
def test_a_body_decodes_the_quick_way_as_field_by_field(data: dict[str, Any]) -> None:
    """Any body, valid or changed: the same instruction, or the same refusal, both ways."""
    assert outcome(lambda: instruction_from_fields(data)) == outcome(lambda: field_by_field(data))


def test_every_sample_body_decodes_to_itself() -> None:
    """Each sample's own fields decode (the quick way where it applies) to the sample."""
    for sample in SAMPLES:
        assert instruction_from_fields(sample.to_fields()) == sample
    assert {_field_plan(type(s)).plain for s in SAMPLES} == {True, False}  # both ways taken


HEX = st.one_of(
    st.binary(max_size=33).map(bytes.hex),
    st.binary(min_size=1, max_size=33).map(lambda b: b.hex().upper()),
    st.sampled_from(["a", "ab cd", "zz", "", "0x00"]),
)
PARTY = st.tuples(st.sampled_from(["ICBC", "", "é"]), st.just(""), HEX).map(list)
ENDORSEMENT = st.tuples(
    st.sampled_from(["PBOC", ""]),
    st.sampled_from(["ICBC", ""]),
    HEX,
    st.one_of(st.integers(0, 5), st.booleans(), st.just(1.0)),
    st.one_of(st.integers(1, 6), st.booleans(), st.just("2")),
    st.one_of(st.lists(HEX, max_size=3), st.just("ab"), st.lists(st.integers(), max_size=1)),
).map(list)
ODD = st.one_of(
    st.lists(st.text(max_size=3), max_size=7),
    st.sampled_from([None, 7, "ab", {"a": 1}, ("ICBC", "", "ab")]),
    st.tuples(st.integers(), st.just(""), HEX).map(list),
    st.tuples(st.just("ICBC"), st.integers(), HEX).map(list),
    st.tuples(st.just("ICBC"), st.just(""), st.integers()).map(list),
)
SIGNATURES = st.lists(st.one_of(PARTY, ENDORSEMENT, ODD), max_size=5)


def one_by_one(signatures: list[Any]) -> tuple[Signature, ...]:
    return tuple(_signature_from_fields(s) for s in signatures)


@settings(max_examples=2000, deadline=None)
@given(SIGNATURES)
def test_signatures_decode_the_quick_way_as_one_by_one(signatures: list[Any]) -> None:
    """Any signature list, valid or broken: the same signatures, or the same refusal."""
    assert outcome(lambda: _signatures_from_fields(signatures)) == outcome(
        lambda: one_by_one(signatures)
    )
