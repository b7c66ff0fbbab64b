"""The MQTT contract: topics, message payloads, broker credentials and ACL, backoff, and the
subscriber's de-duplication and gap filling."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.domain import Leg, Outcome, Pay
from bridge.node.publisher import Backoff
from bridge.notify import (
    FINAL_TOPIC,
    MqttSettings,
    acl_text,
    broker_config_text,
    password_hash,
    settlement_message,
    settlement_topic,
)
from participants.sdk import AsyncSettlementSubscriber, HistoryEntry, SettlementEvent


def test_topics_are_versioned_per_central_bank_and_bank() -> None:
    """A bank's settlements live under its central bank; finality has one topic."""
    assert settlement_topic("PBOC", "ICBC") == "cbdc-bridge/v1/PBOC/ICBC/settlements"
    assert FINAL_TOPIC == "cbdc-bridge/v1/blocks/final"


def test_settlement_message_carries_seq_id_and_previous_seq() -> None:
    """The payload is the outbox event with a version and the topic's previous seq."""
    event = {"seq": 9, "instruction_id": "i-9", "sender": "ICBC", "parties": ["ICBC"]}
    decoded = json.loads(settlement_message(event, prev_seq=4))
    assert decoded == {**event, "v": 1, "prev_seq": 4}


def test_password_hash_is_mosquitto_pbkdf2_sha512() -> None:
    """`$7$101$salt$hash`: PBKDF2-HMAC-SHA512 of the password, as mosquitto_passwd writes."""
    salt = b"0123456789ab"
    _, kind, rounds, salt64, hash64 = password_hash("s3cret", salt).split("$")
    assert (kind, rounds) == ("7", "101")
    assert base64.b64decode(salt64) == salt
    assert base64.b64decode(hash64) == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert password_hash("s3cret") != password_hash("s3cret")  # a fresh salt each time


def test_acl_lets_banks_read_their_own_topics_and_only_the_bridge_write() -> None:
    """Each user's block: a bank reads its own subtree, a central bank its banks', the bridge
    writes; nobody else may write."""
    blocks = acl_text({"PBOC": ["ICBC"], "HKMA": ["HSBCHK"]}).split("\n\n")
    icbc = next(b for b in blocks if "user ICBC" in b)
    assert "topic read cbdc-bridge/v1/PBOC/ICBC/#" in icbc
    assert "HKMA" not in icbc
    pboc = next(b for b in blocks if "user PBOC" in b)
    assert "topic read cbdc-bridge/v1/PBOC/#" in pboc
    writers = [b for b in blocks if "write" in b]
    assert len(writers) == 1
    assert "user bridge" in writers[0]


def test_broker_config_is_loopback_and_authenticated(tmp_path: Path) -> None:
    """The generated broker listens on 127.0.0.1 only and refuses anonymous clients."""
    text = broker_config_text(18830, tmp_path)
    assert "listener 18830 127.0.0.1" in text
    assert "allow_anonymous false" in text
    assert f"password_file {tmp_path / 'passwd'}" in text
    assert f"acl_file {tmp_path / 'acl'}" in text
    assert "persistence false" in text


def test_backoff_is_jittered_and_capped() -> None:
    """Pauses stay within [base, cap], grow with attempts, and start over after a reset."""
    backoff = Backoff(base=0.1, cap=2.0)
    pauses = [backoff.next() for _ in range(20)]
    assert all(0.1 <= p <= 2.0 for p in pauses)
    assert max(pauses[10:]) > max(pauses[:2])
    backoff.reset()
    assert backoff.next() <= 0.2


def event(seq: int, prev_seq: int) -> SettlementEvent:
    return SettlementEvent(seq, 1, 0, "pay", "SETTLED", "ICBC", f"i-{seq}", "", (), "", prev_seq)


def history(seq: int) -> HistoryEntry:
    body = Pay(f"i-{seq}", "ICBC", 0, "CCB", "CNY", 5)
    return HistoryEntry(seq, 0, 1, Outcome.SETTLED, body, (Leg("ICBC", "CCB", "CNY", 5),))


async def accept_all(
    subscriber: AsyncSettlementSubscriber, messages: list[tuple[SettlementEvent, bool]]
) -> list[SettlementEvent]:
    out = []
    for message, stale in messages:
        out += [e async for e in subscriber._accept(message, stale)]
    return out


def subscriber(from_seq: int, log: dict[int, HistoryEntry] | None) -> AsyncSettlementSubscriber:
    async def gaps(from_seq: int) -> AsyncIterator[HistoryEntry]:
        assert log is not None
        for seq in sorted(log):
            if seq >= from_seq:
                yield log[seq]

    return AsyncSettlementSubscriber(
        MqttSettings(),
        central_bank="PBOC",
        bank="ICBC",
        from_seq=from_seq,
        gaps=None if log is None else gaps,
    )


async def test_duplicates_are_dropped_and_order_kept() -> None:
    """A seq already yielded (a redelivery) is dropped; each seq comes out once."""
    sub = subscriber(1, {})
    got = await accept_all(sub, [(event(3, 0), False), (event(3, 0), False), (event(5, 3), False)])
    assert [e.seq for e in got] == [3, 5]
    assert sub.duplicates == 1


async def test_gap_is_filled_from_the_grpc_stream_before_the_message() -> None:
    """A message whose prev_seq is past the last seq yielded brings the missed entries first."""
    log = {seq: history(seq) for seq in (3, 5, 8, 12)}
    sub = subscriber(4, log)
    got = await accept_all(sub, [(event(12, 8), False)])
    assert [(e.seq, e.source) for e in got] == [(5, "grpc"), (8, "grpc"), (12, "mqtt")]
    assert sub.filled == 2


async def test_retained_message_marks_the_start_when_watching_new_settlements() -> None:
    """From seq 0 (new settlements only), the retained latest message is not yielded and no
    gap is filled before the next live one."""
    sub = subscriber(0, {})
    got = await accept_all(sub, [(event(7, 2), True), (event(9, 7), False)])
    assert [e.seq for e in got] == [9]
    assert sub.filled == 0


async def test_unfillable_gap_is_counted_without_a_grpc_stream() -> None:
    """Without a gRPC stream a gap is counted in `missed` and the message still yielded."""
    sub = subscriber(1, None)
    got = await accept_all(sub, [(event(6, 4), False)])
    assert [e.seq for e in got] == [6]
    assert sub.missed == 1


async def test_async_subscriber_reports_its_stats_as_the_sync_one_does() -> None:
    """`AsyncSettlementSubscriber.stats` counts duplicates, filled entries and missed gaps, as
    docs/events.md says of both subscribers."""
    sub = subscriber(4, {seq: history(seq) for seq in (5, 8)})
    await accept_all(sub, [(event(9, 8), False), (event(9, 8), False)])
    assert sub.stats == {"duplicates": 1, "filled": 2, "missed": 0}
