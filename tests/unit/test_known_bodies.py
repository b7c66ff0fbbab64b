"""A central bank replica replays with the bodies its node decoded at the edge (`KnownBodies`).

The node keeps, by their canonical body bytes, the envelopes it decoded from protobuf; the
replay of an entry whose body bytes are exactly one of them takes that body instead of decoding
it again, and drops it. What is kept stays bounded, and no byte of any entry is read otherwise
than the full decoding reads it.
"""

from __future__ import annotations

import pytest

import bridge.domain
from bridge import wire
from bridge._proto.bridge.v1.types_pb2 import SignedInstruction
from bridge.core.ledger import SignatureCheck
from bridge.domain import Entry, Envelope, KnownBodies, Pay
from bridge.errors import Reason, Refused
from loadtest import bench_replay
from participants.central_bank.replica import Replica

T0 = 1_763_889_940_000


def replica(log: bench_replay.ReplayLog) -> Replica:
    return bench_replay._replica(log.genesis, SignatureCheck.ENDORSEMENTS, None)


def edge_envelopes(log: bench_replay.ReplayLog) -> list[list[Envelope]]:
    """Per PvP block, its PvPs as a node decodes the banks' signed instructions at its edge."""
    return [
        [wire.envelope_from_proto(SignedInstruction.FromString(m)) for m in block]
        for block in bench_replay._edge_messages(log, 1.0)
    ]


def decoding(data: bytes, known: KnownBodies | None = None) -> object:
    try:
        entry = Entry.from_canonical_bytes(data, known)
    except Refused as refused:
        return ("refused", refused.reason, refused.message)
    return ("entry", entry, entry.canonical_bytes(), entry.envelope.body_bytes)


def test_replay_takes_the_bodies_decoded_at_the_edge_and_ends_where_the_full_decoding_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every PvP known: no body is decoded from JSON again, each known body is taken once,
    and the replica reaches the same head and balances as one decoding every entry."""
    log = bench_replay.build_log(pvps=12, block=4)
    (setup_header, setup_entries), *rest = log.blocks
    plain, reusing = replica(log), replica(log)
    for node in (plain, reusing):
        node.apply_block(setup_header, setup_entries)
    for header, entries in rest:
        plain.apply_block(header, entries)
    edge = edge_envelopes(log)
    setup_misses = reusing.known.misses  # the setup block's entries: none known
    decoded: list[object] = []
    full = bridge.domain.instruction_from_fields
    monkeypatch.setattr(
        bridge.domain, "instruction_from_fields", lambda body: decoded.append(body) or full(body)
    )
    for (header, entries), envelopes in zip(rest, edge, strict=True):
        for envelope in envelopes:
            reusing.known.remember(envelope)
        reusing.apply_block(header, entries)
    assert decoded == []
    assert (reusing.known.hits, reusing.known.misses - setup_misses, len(reusing.known)) == (
        12,
        0,
        0,
    )
    assert reusing.head_hash == plain.head_hash
    assert reusing.ledger.balances == plain.ledger.balances


def test_an_entry_whose_body_is_not_known_is_decoded_the_full_way() -> None:
    """Half the PvPs known: the others are decoded in full, and the replay still completes."""
    log = bench_replay.build_log(pvps=8, block=4)
    (setup_header, setup_entries), *rest = log.blocks
    node = replica(log)
    node.apply_block(setup_header, setup_entries)
    setup_misses = node.known.misses
    for (header, entries), envelopes in zip(rest, edge_envelopes(log), strict=True):
        for envelope in envelopes[::2]:
            node.known.remember(envelope)
        node.apply_block(header, entries)
    assert (node.known.hits, node.known.misses - setup_misses) == (4, 4)
    assert node.height == len(log.blocks)


def pay(number: int) -> Envelope:
    body = Pay(f"p-{number}", "ICBC", T0 + 60_000, "CCB", "CNY", 5, "", signed_at=T0)
    return wire.envelope_from_proto(wire.envelope_to_proto(Envelope.of(body)))


def test_known_bodies_keep_at_most_their_bound_dropping_the_oldest() -> None:
    """Remembering more than the bound drops the oldest: memory stays bounded however many
    instructions are decoded and never replayed (refused before the log)."""
    known = KnownBodies(bound=8)
    envelopes = [pay(n) for n in range(50)]
    for envelope in envelopes:
        known.remember(envelope)
    assert len(known) == 8
    assert all(known.take(e.body_bytes) is None for e in envelopes[:42])
    assert [known.take(e.body_bytes) for e in envelopes[42:]] == envelopes[42:]
    assert len(known) == 0
    assert known.take(envelopes[-1].body_bytes) is None  # taken once, then dropped


def test_an_envelope_built_in_code_is_not_kept() -> None:
    """Only envelopes whose decoder checked the body's shape are kept (not `Envelope.of`)."""
    known = KnownBodies()
    known.remember(Envelope.of(pay(1).body))
    assert len(known) == 0


def test_any_byte_changed_in_an_entry_with_a_known_body_is_read_as_the_full_decoding_reads_it() -> (
    None
):
    """Every byte of a real dual PvP entry replaced in turn, its body known: the same entry or
    the same refusal (reason and message) as without known bodies."""
    log = bench_replay.build_log(pvps=1, block=1)
    data = log.blocks[1][1][0]
    envelope = edge_envelopes(log)[0][0]
    changed = 0
    for at in range(len(data)):
        for replacement in {data[at] ^ 0x01, ord('"'), ord("0")} - {data[at]}:
            broken = data[:at] + bytes([replacement]) + data[at + 1 :]
            known = KnownBodies()
            known.remember(envelope)
            assert decoding(broken, known) == decoding(broken), (at, replacement)
            changed += 1
    assert changed > 2 * len(data)
    known = KnownBodies()
    known.remember(envelope)
    assert decoding(data, known) == decoding(data)
    assert known.hits == 1


def test_a_known_body_whose_entry_is_not_proven_counts_as_a_miss_not_a_hit() -> None:
    """An entry whose body is known but whose other bytes are not canonical is decoded the
    full way and refused; the gauges count it as a miss, never as a body reused."""
    log = bench_replay.build_log(pvps=1, block=1)
    data = log.blocks[1][1][0]
    broken = data.replace(b'"seq":', b'"seq": ', 1)  # not canonical: a space
    known = KnownBodies()
    known.remember(edge_envelopes(log)[0][0])
    assert decoding(broken, known)[:2] == ("refused", Reason.MALFORMED)
    assert (known.hits, known.misses) == (0, 1)


def test_a_body_remembered_again_is_the_newest() -> None:
    """An instruction decoded again (a retry) moves to the newest place: the bound drops the
    oldest others first."""
    known = KnownBodies(bound=3)
    first, second, third, fourth = (pay(n) for n in range(4))
    for envelope in (first, second, third, first, fourth):
        known.remember(envelope)
    assert known.take(second.body_bytes) is None
    assert known.take(first.body_bytes) is first


def test_json_nested_too_deep_is_refused_malformed_with_or_without_known_bodies() -> None:
    """An entry whose signatures nest 100,000 deep is a MALFORMED refusal either way, not a
    RecursionError out of the parser."""
    log = bench_replay.build_log(pvps=1, block=1)
    envelope = edge_envelopes(log)[0][0]
    data = (
        b'{"body":' + envelope.body_bytes + b',"outcome":"SETTLED","seq":1,"sigs":'
        + b"[" * 100_000 + b"]" * 100_000 + b',"time":1}'
    )  # fmt: skip
    known = KnownBodies()
    known.remember(envelope)
    for with_known in (None, known):
        verdict = decoding(data, with_known)
        assert verdict[:2] == ("refused", Reason.MALFORMED)
