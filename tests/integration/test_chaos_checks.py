"""The chaos campaign's checks against a live network: true records pass, bad ones fail.

Each check of `participants.chaos.checks.Checker` is run on what really settled, where it must
pass, and on a record or a store copy that breaks its promise in one way (an acknowledgement
the log lacks or places elsewhere, an instruction that settles when resent, a tampered entry,
a forged attestation, an expiry that is not the bridge's, a hold past its deadline), where it
must fail.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.domain import Pay, ProposePvp
from participants.chaos.checks import Ack, Checker, CheckReport
from tests.conftest import VALID_FOR_MS, LiveNetwork, new_id, now_ms, wait_for

PAYER, PAYEE = "ICBC", "BOCQ"  # both banks of PBOC
COUNTERPARTY = "HSBCHK"  # a bank of HKMA


@pytest.fixture(scope="module")
def funded(live: LiveNetwork) -> LiveNetwork:
    """The module's network with the payer funded."""
    live.issue(PAYER, 10**9)
    return live


@pytest.fixture(scope="module")
def checker(funded: LiveNetwork) -> Iterator[Checker]:
    """A checker of the live network's bridge store."""
    checker = Checker(funded.config, str(funded.config.bridge_db))
    try:
        yield checker
    finally:
        checker.close()


def settled_pay(live: LiveNetwork) -> Ack:
    """A payment sent through PBOC's node, as the load client records its acknowledgement."""
    body = Pay(new_id("pay"), PAYER, now_ms() + VALID_FOR_MS, PAYEE, "CNY", 5, signed_at=now_ms())
    request = live.signed(body)
    status = live.node("PBOC").Pay(request, timeout=20)
    return Ack("Pay", "PBOC", PAYER, body.instruction_id, status.receipt.seq, "SETTLED",
               request.SerializeToString())  # fmt: skip


def store_copy(live: LiveNetwork, directory: Path) -> Path:
    """A consistent copy of the bridge's SQLite store, to tamper with."""
    copy = directory / "copy.sqlite"
    source = sqlite3.connect(f"file:{live.config.bridge_db}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    with source, target:
        source.backup(target)
    source.close()
    target.close()
    return copy


def tamper(copy: Path, sql: str) -> None:
    with sqlite3.connect(copy) as db:
        assert db.execute(sql).rowcount >= 1


def test_a_true_record_passes_logged_once_and_resubmitted(
    funded: LiveNetwork, checker: Checker
) -> None:
    """A real acknowledgement is in the log once at its seq, and resent it is a duplicate."""
    ack = settled_pay(funded)
    report = CheckReport()
    checker.logged_exactly_once([ack], report)
    checker.resubmit([ack], report)
    assert (report.lost, report.misplaced, report.doubled) == (0, 0, 0)
    assert report.resubmitted == 1
    assert report.resubmit_failures == []
    assert report.passed


def test_an_acknowledgement_the_log_lacks_is_lost(funded: LiveNetwork, checker: Checker) -> None:
    """An acknowledged id that no entry carries counts as lost."""
    ack = settled_pay(funded)
    report = CheckReport()
    checker.logged_exactly_once([replace(ack, instruction_id=new_id("gone"))], report)
    assert report.lost == 1
    assert not report.passed


def test_an_acknowledgement_at_another_seq_is_misplaced(
    funded: LiveNetwork, checker: Checker
) -> None:
    """An entry at another seq than the one acknowledged is misplaced, and its resubmission
    (a duplicate at the real seq) is reported as a failure."""
    ack = settled_pay(funded)
    moved = replace(ack, seq=ack.seq + 1)
    report = CheckReport()
    checker.logged_exactly_once([moved], report)
    checker.resubmit([moved], report)
    assert report.misplaced == 1
    assert len(report.resubmit_failures) == 1
    assert f"!= {moved.seq}" in report.resubmit_failures[0]
    assert not report.passed


def test_an_instruction_that_settles_when_resent_is_doubled(
    funded: LiveNetwork, checker: Checker
) -> None:
    """A "acknowledged" instruction the bridge never had settles when resent: doubled."""
    body = Pay(new_id("pay"), PAYER, now_ms() + VALID_FOR_MS, PAYEE, "CNY", 5, signed_at=now_ms())
    never = Ack("Pay", "PBOC", PAYER, body.instruction_id, 1, "SETTLED",
                funded.signed(body).SerializeToString())  # fmt: skip
    report = CheckReport()
    checker.resubmit([never], report)
    assert report.doubled == 1
    assert not report.passed


def test_log_verify_fails_on_a_tampered_entry(funded: LiveNetwork, tmp_path: Path) -> None:
    """`log verify` passes on a copy of the store and fails once one entry's bytes change."""
    settled_pay(funded)
    copy = store_copy(funded, tmp_path)
    clean = Checker(funded.config, str(copy))
    try:
        report = CheckReport()
        clean.log_verify(report)
        assert report.log_verified is True, report.log_verify_detail
        tamper(copy, "UPDATE entries SET data = data || x'00' WHERE seq = (SELECT MAX(seq) "
                     "FROM entries WHERE kind = 'pay')")  # fmt: skip
        report = CheckReport()
        clean.log_verify(report)
        assert report.log_verified is False
        assert not report.passed
    finally:
        clean.close()


def test_a_forged_attestation_is_a_replica_disagreement(
    funded: LiveNetwork, tmp_path: Path
) -> None:
    """Every node attests the sealed height over the bridge's hashes: no disagreement; an
    attestation over another hash is one."""
    settled_pay(funded)
    funded.wait_attested_by_all(funded.finality().sealed_height)
    copy = store_copy(funded, tmp_path)
    checker = Checker(funded.config, str(copy))
    try:
        report = CheckReport()
        checker.replicas(report, timeout=5)
        assert report.replica_disagreements == 0, report.replicas_behind
        tamper(copy, "UPDATE attestations SET block_hash = zeroblob(32) WHERE central_bank = "
                     "'HKMA' AND height = (SELECT MAX(height) FROM attestations)")  # fmt: skip
        report = CheckReport()
        checker.replicas(report, timeout=1)
        assert report.replica_disagreements >= 1
        assert not report.passed
    finally:
        checker.close()


def proposal(live: LiveNetwork, settle_in_ms: int) -> Ack:
    """A PvP proposed by PBOC's bank to HKMA's, acknowledged (HELD), never accepted."""
    body = ProposePvp(
        new_id("pvp"), PAYER, now_ms() + VALID_FOR_MS, COUNTERPARTY, "CNY", 100, "HKD", 108,
        "1.08", now_ms() + settle_in_ms, "check test", signed_at=now_ms(),
    )  # fmt: skip
    request = live.signed(body)
    status = live.node("PBOC").ProposePvp(request, timeout=20)
    return Ack("ProposePvp", "PBOC", PAYER, body.instruction_id, status.receipt.seq, "HELD",
               request.SerializeToString())  # fmt: skip


def test_an_expiry_that_is_not_the_bridges_is_wrong(funded: LiveNetwork, tmp_path: Path) -> None:
    """A PvP left to expire is expired once by the bridge at or after its deadline; in a store
    whose closing entry is something else, or stamped before the deadline, it is wrong."""
    ack = proposal(funded, settle_in_ms=800)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()

    def expired() -> bool:
        report = CheckReport()
        checker = Checker(funded.config, str(funded.config.bridge_db))
        try:
            checker.holds_and_expiries([ack], report, grace_ms=2_000)
        finally:
            checker.close()
        return report.expiries_checked == 1 and report.expiries_wrong == 0

    wait_for(expired, timeout=30, what="the proposal to expire", every=0.2)
    for sql in (
        "UPDATE entries SET kind = 'pay' WHERE kind = 'pvp_expire'",
        "UPDATE entries SET time = 0 WHERE kind = 'pvp_expire'",
    ):
        copy = store_copy(funded, copy_dir)
        tamper(copy, sql)
        checker = Checker(funded.config, str(copy))
        try:
            report = CheckReport()
            checker.holds_and_expiries([ack], report, grace_ms=2_000)
        finally:
            checker.close()
        assert report.expiries_wrong == 1, sql
        assert not report.passed
        copy.unlink()


def test_a_hold_past_its_deadline_is_stuck(funded: LiveNetwork, tmp_path: Path) -> None:
    """A PvP still HELD is fine before its deadline; once the ledger's time is past it (a
    store whose last block is stamped later), it is a stuck hold."""
    ack = proposal(funded, settle_in_ms=600_000)
    time.sleep(0.1)
    copy = store_copy(funded, tmp_path)
    checker = Checker(funded.config, str(copy))
    try:
        report = CheckReport()
        checker.holds_and_expiries([ack], report, grace_ms=2_000)
        assert report.stuck_holds == 0
        tamper(copy, f"UPDATE blocks SET time = {now_ms() + 3_600_000} "
                     "WHERE height = (SELECT MAX(height) FROM blocks)")  # fmt: skip
        report = CheckReport()
        checker.holds_and_expiries([ack], report, grace_ms=2_000)
        assert report.stuck_holds == 1
        assert not report.passed
    finally:
        checker.close()
