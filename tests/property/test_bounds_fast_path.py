"""The bounds check's one-pass test agrees with the walk that names the refused field.

`check_message` first runs a yes/no pass and walks the message (naming the first field out of
bounds) only when that pass says no. Random dual-signed instructions with fields inside, at
and past their bounds (lengths, character sets, signature counts, times) must get the same
verdict from both, so the fast pass never lets through what the walk refuses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.bounds import _walk, _within, check_message
from bridge.errors import Refused

IDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,70}", fullmatch=True),
    st.text(max_size=70),
)
CODES = st.one_of(st.sampled_from(["CNY", "HKD", "cny", "HKDX", ""]), st.text(max_size=5))
TEXTS = st.one_of(st.text(max_size=150), st.text(alphabet="ab \n\t\x00é", max_size=150))
TIMES = st.one_of(st.integers(-5, 5), st.integers(1, 2**62))


@st.composite
def requests(draw: st.DrawFn) -> bridge_pb.SubmitRequest:
    pvp = types.DualPvp(
        counterparty=draw(IDS),
        pay_currency=draw(CODES),
        pay_amount=draw(st.integers(-(2**40), 2**40)),
        receive_currency=draw(CODES),
        receive_amount=draw(st.integers(0, 2**40)),
        rate=draw(st.one_of(st.from_regex(r"[0-9.]{1,40}", fullmatch=True), st.text(max_size=8))),
        reference=draw(TEXTS),
    )
    instruction = types.Instruction(
        instruction_id=draw(IDS), sender=draw(IDS), valid_until=draw(TIMES), pvp_dual=pvp
    )
    signatures = [
        types.Signature(signer=draw(IDS), value=draw(st.binary(max_size=80)), endorses=draw(IDS))
        for _ in range(draw(st.integers(0, 6)))
    ]
    signed = types.SignedInstruction(instruction=instruction, signatures=signatures)
    return bridge_pb.SubmitRequest(correlation_id=draw(st.integers(0, 2**63)), instruction=signed)


def _walk_refuses(message: bridge_pb.SubmitRequest) -> bool:
    try:
        _walk(message, "")
    except Refused:
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(requests())
def test_the_fast_pass_and_the_walk_agree(message: bridge_pb.SubmitRequest) -> None:
    """A request passes the one-pass test exactly when the naming walk finds nothing."""
    assert _within(message) is not _walk_refuses(message)
    try:
        check_message(message)
    except Refused:
        assert _walk_refuses(message)
    else:
        assert not _walk_refuses(message)
