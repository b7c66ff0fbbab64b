"""Refusals a central bank node decides itself are recorded there, once each, over real gRPC.

A network (bridge and four central bank nodes) runs on loopback. Banks send their nodes
instructions the node must refuse before the bridge sees them (bad signature, a bank of another
central bank, the wrong body kind, a zero amount, an id too long sent as raw bytes), a dual
PvP whose counterparty's node refuses the endorsement, and one the bridge refuses. Each node's
records, read through `CentralBankAdmin.ListRefusals` and the bank-facing `GetRefusals`, must
hold exactly the refusals that node decided, once each with their reason, while balances,
supply and the log stay as they were.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Pay
from bridge.errors import Reason
from participants.central_bank.refusals import read_refusals
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


@pytest.fixture(scope="module", autouse=True)
def funded(live: LiveNetwork) -> None:
    """ICBC and HSBCHK hold some of their own currency."""
    for bank in ("ICBC", "HSBCHK"):
        assert live.issue(bank, 1_000_000).receipt.outcome == types.OUTCOME_ISSUED


def pay(sender: str = "ICBC", payee: str = "BOCQ", amount: int = 1_000) -> Pay:
    return Pay(
        new_id("pay"),
        sender,
        now_ms() + VALID_FOR_MS,
        payee,
        "CNY",
        amount,
        "INV-7",
        signed_at=now_ms(),
    )


def listed(live: LiveNetwork, central_bank: str) -> list[cb_pb.RecordedRefusal]:
    """Every refusal the node recorded, through its operators' ListRefusals, page by page."""
    rows: list[cb_pb.RecordedRefusal] = []
    from_id = 1
    while True:
        page = live.admin(central_bank).ListRefusals(
            cb_pb.ListRefusalsRequest(from_id=from_id, limit=2),
            metadata=live.admin_metadata(central_bank),
            timeout=RPC_TIMEOUT,
        )
        rows += page.refusals
        if not page.next_id:
            return rows
        from_id = page.next_id


def refuse(call: Callable[[], object], reason: Reason) -> None:
    error = refusal_of(call)
    assert reason_of(error) is reason, error.details()


def test_refusals_decided_at_a_node_are_recorded_there_once_each(live: LiveNetwork) -> None:
    """Each refusal is in the records of the node that decided it, once, with its reason; the
    bridge's refusals are not; balances, supply and the log did not change."""
    pboc = live.node("PBOC")
    before = live.snapshot()
    expected: dict[str, tuple[str, str, str]] = {}  # instruction id -> node, sender, reason

    forged = pay()
    refuse(
        lambda: pboc.Pay(live.signed(forged, signer="BOCQ"), timeout=RPC_TIMEOUT),
        Reason.BAD_SIGNATURE,
    )
    expected[forged.instruction_id] = ("PBOC", "ICBC", "BAD_SIGNATURE")
    foreign = pay(sender="HSBCHK", payee="ICBC")
    refuse(
        lambda: pboc.Pay(live.signed(foreign), timeout=RPC_TIMEOUT), Reason.NOT_HOME_CENTRAL_BANK
    )
    expected[foreign.instruction_id] = ("PBOC", "HSBCHK", "NOT_HOME_CENTRAL_BANK")
    wrong_kind = pay()
    refuse(lambda: pboc.ProposePvp(live.signed(wrong_kind), timeout=RPC_TIMEOUT), Reason.MALFORMED)
    expected[wrong_kind.instruction_id] = ("PBOC", "ICBC", "MALFORMED")
    zero = pay(amount=0)
    refuse(lambda: pboc.Pay(live.signed(zero), timeout=RPC_TIMEOUT), Reason.NON_POSITIVE_AMOUNT)
    expected[zero.instruction_id] = ("PBOC", "ICBC", "NON_POSITIVE_AMOUNT")
    too_long = live.signed(pay())  # refused at the edge, before the servicer decodes it
    too_long.instruction.instruction_id = new_id("long") + "-" + "x" * 200
    raw = live.channel(live.address("PBOC")).unary_unary(
        "/bridge.v1.CentralBank/Pay", request_serializer=None, response_deserializer=None
    )
    refuse(lambda: raw(too_long.SerializeToString(), timeout=RPC_TIMEOUT), Reason.FIELD_TOO_LONG)
    expected[too_long.instruction.instruction_id[:64] + "…"] = ("PBOC", "ICBC", "FIELD_TOO_LONG")
    streamed = pay()
    request = cb_pb.BankSubmitRequest(
        correlation_id=1, instruction=live.signed(streamed, signer="BOCQ")
    )
    (answer,) = list(pboc.SubmitStream(iter([request]), timeout=RPC_TIMEOUT))
    assert answer.refusal.reason == "BAD_SIGNATURE"
    expected[streamed.instruction_id] = ("PBOC", "ICBC", "BAD_SIGNATURE")
    # HSBCHK's signature forged: HKMA's node refuses to endorse its leg
    peer_refused = cross_border_dual_pvp()
    message = live.dual_signed(peer_refused)
    forged_leg = live.signed(peer_refused, signer="BOCHK").signatures[0]
    for signature in message.signatures:
        if signature.signer == "HSBCHK":
            signature.value = forged_leg.value
    refuse(lambda: pboc.SubmitDualPvp(message, timeout=RPC_TIMEOUT), Reason.BAD_SIGNATURE)
    expected[peer_refused.instruction_id] = ("HKMA", "ICBC", "BAD_SIGNATURE")
    broke = pay(sender="ICBC", amount=10**15)  # the bridge refuses it, and records it itself
    refuse(lambda: pboc.Pay(live.signed(broke), timeout=RPC_TIMEOUT), Reason.INSUFFICIENT_FUNDS)

    recorded = {cb: listed(live, cb) for cb in ("PBOC", "HKMA")}
    ours = {*expected, broke.instruction_id}
    found = [
        (cb, row) for cb, rows in recorded.items() for row in rows if row.instruction_id in ours
    ]
    assert Counter(row.instruction_id for _, row in found) == dict.fromkeys(expected, 1)
    assert {row.instruction_id: (cb, row.sender, row.reason) for cb, row in found} == expected
    kinds = {row.instruction_id: row.kind for _, row in found}
    assert kinds[wrong_kind.instruction_id] == "pay"
    assert kinds[peer_refused.instruction_id] == "pvp_dual"
    corridors = {row.instruction_id: row.corridor for _, row in found}
    assert corridors[peer_refused.instruction_id] == "CN-HK"
    assert corridors[forged.instruction_id] == "CN-CN"
    assert all(row.time > 0 for _, row in found)
    assert [row.id for row in recorded["PBOC"]] == sorted(row.id for row in recorded["PBOC"])
    assert live.snapshot() == before
    # the same rows, in the same order, are in the node's own file
    on_disk = read_refusals(live.config.refusals_path("PBOC"))
    assert [r.instruction_id for r in on_disk] == [r.instruction_id for r in recorded["PBOC"]]


def test_a_bank_reads_its_own_refusals_only(live: LiveNetwork) -> None:
    """GetRefusals answers the signed-in bank's own refused instructions and no other bank's."""
    pboc = live.node("PBOC")
    mine, theirs = pay(sender="BOCQ", payee="ICBC"), pay()
    refuse(lambda: pboc.ProposePvp(live.signed(mine), timeout=RPC_TIMEOUT), Reason.MALFORMED)
    refuse(lambda: pboc.ProposePvp(live.signed(theirs), timeout=RPC_TIMEOUT), Reason.MALFORMED)
    query = live.query("GetRefusals", cb_pb.RefusalsQuery(limit=500), "BOCQ")
    page = pboc.GetRefusals(query, timeout=RPC_TIMEOUT)
    assert {row.sender for row in page.refusals} == {"BOCQ"}
    assert mine.instruction_id in {row.instruction_id for row in page.refusals}
    assert page.next_id == 0


def test_refusals_in_a_banks_name_it_did_not_sign_are_not_its_own(live: LiveNetwork) -> None:
    """Instructions that name BOCQ as sender without its valid signature (forged, refused at
    the edge, a forged issuance request) are recorded as unauthenticated: operators see them
    flagged, BOCQ's GetRefusals never returns them; what BOCQ signed is flagged authenticated."""
    pboc = live.node("PBOC")
    forged = pay(sender="BOCQ", payee="ICBC")
    refuse(
        lambda: pboc.Pay(live.signed(forged, signer="ICBC"), timeout=RPC_TIMEOUT),
        Reason.BAD_SIGNATURE,
    )
    too_long = live.signed(pay(sender="BOCQ", payee="ICBC"))
    too_long.instruction.instruction_id = new_id("long") + "-" + "x" * 200
    raw = live.channel(live.address("PBOC")).unary_unary(
        "/bridge.v1.CentralBank/Pay", request_serializer=None, response_deserializer=None
    )
    refuse(lambda: raw(too_long.SerializeToString(), timeout=RPC_TIMEOUT), Reason.FIELD_TOO_LONG)
    issuance = cb_pb.IssuanceRequest(
        request_id=new_id("req"), valid_until=now_ms() + VALID_FOR_MS, amount=1, signed_at=now_ms()
    )
    forged_request = live.query("RequestIssuance", issuance, "BOCQ", signer="ICBC")
    refuse(lambda: pboc.RequestIssuance(forged_request, timeout=RPC_TIMEOUT), Reason.BAD_SIGNATURE)
    genuine = pay(sender="BOCQ", payee="ICBC")
    refuse(lambda: pboc.ProposePvp(live.signed(genuine), timeout=RPC_TIMEOUT), Reason.MALFORMED)
    not_signed = {
        forged.instruction_id,
        too_long.instruction.instruction_id[:64] + "…",
        issuance.request_id,
    }

    flags = {row.instruction_id: (row.sender, row.authenticated) for row in listed(live, "PBOC")}
    assert {i: flags.get(i) for i in not_signed} == dict.fromkeys(not_signed, ("BOCQ", False))
    assert flags.get(genuine.instruction_id) == ("BOCQ", True)
    query = live.query("GetRefusals", cb_pb.RefusalsQuery(limit=500), "BOCQ")
    page = live.node("PBOC").GetRefusals(query, timeout=RPC_TIMEOUT)
    returned = {row.instruction_id for row in page.refusals}
    assert genuine.instruction_id in returned
    assert not returned & not_signed
    assert all(row.authenticated and row.sender == "BOCQ" for row in page.refusals)


def test_refusal_reads_are_authorised(live: LiveNetwork) -> None:
    """Refusal reads need the operators' token, or a bank's own valid signature at its node."""
    no_token = refusal_of(
        lambda: live.admin("PBOC").ListRefusals(cb_pb.ListRefusalsRequest(), timeout=RPC_TIMEOUT)
    )
    assert no_token.code() is grpc.StatusCode.UNAUTHENTICATED
    forged = live.query("GetRefusals", cb_pb.RefusalsQuery(), "ICBC", signer="BOCQ")
    error = refusal_of(lambda: live.node("PBOC").GetRefusals(forged, timeout=RPC_TIMEOUT))
    assert reason_of(error) is Reason.BAD_SIGNATURE
    elsewhere = live.query("GetRefusals", cb_pb.RefusalsQuery(), "HSBCHK")
    error = refusal_of(lambda: live.node("PBOC").GetRefusals(elsewhere, timeout=RPC_TIMEOUT))
    assert reason_of(error) is Reason.NOT_HOME_CENTRAL_BANK
    too_big = live.query("GetRefusals", cb_pb.RefusalsQuery(limit=501), "ICBC")
    error = refusal_of(lambda: live.node("PBOC").GetRefusals(too_big, timeout=RPC_TIMEOUT))
    assert reason_of(error) is Reason.BAD_PAGE_SIZE


def test_an_unreadable_refusals_file_is_a_retryable_unavailable(
    live: LiveNetwork, tmp_path: Path
) -> None:
    """While the node's refusals file cannot be read, GetRefusals and ListRefusals answer
    UNAVAILABLE (reason UNAVAILABLE, retryable) saying so, not UNKNOWN; then serve again."""
    pboc = live.node("PBOC")
    forged = pay()
    refuse(
        lambda: pboc.Pay(live.signed(forged, signer="BOCQ"), timeout=RPC_TIMEOUT),
        Reason.BAD_SIGNATURE,
    )
    assert any(r.instruction_id == forged.instruction_id for r in listed(live, "PBOC"))
    path = live.config.refusals_path("PBOC")
    kept = tmp_path / "kept.sqlite"
    os.replace(path, kept)  # the node's own connection keeps writing to the moved file
    path.mkdir()  # where the file was, a directory: no database opens there
    query = live.query("GetRefusals", cb_pb.RefusalsQuery(), "ICBC")
    admin = live.admin("PBOC")
    try:
        errors = [
            refusal_of(lambda: pboc.GetRefusals(query, timeout=RPC_TIMEOUT)),
            refusal_of(
                lambda: admin.ListRefusals(
                    cb_pb.ListRefusalsRequest(),
                    metadata=live.admin_metadata("PBOC"),
                    timeout=RPC_TIMEOUT,
                )
            ),
        ]
    finally:
        path.rmdir()
        os.replace(kept, path)
    for error in errors:
        assert error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
        assert reason_of(error) is Reason.UNAVAILABLE
        assert "refusals file cannot be read" in (error.details() or "")
    assert any(r.instruction_id == forged.instruction_id for r in listed(live, "PBOC"))
