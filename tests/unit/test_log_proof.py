"""Inclusion proofs: built from any source, checked with the central banks' keys alone."""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from analysis.export import export_log
from analysis.sample import SampleLog, SampleOptions, generate
from bridge.crypto import PrivateKey, public_key_to_pem
from bridge.domain import Genesis, GenesisBank, Outcome
from bridge.log.proof import ProofError, Selector, TrustedKeys, build_proof, check_proof
from bridge.log.source import open_source
from bridge.signing import endorse_legs
from tests.unit.test_log_verify import append_entry, batch_of_payments

OPTIONS = SampleOptions(entries=90, block_size=15, rate=100.0, seed=3)
SEQ = 40


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("proof-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def proof(sample: SampleLog) -> dict[str, Any]:
    with open_source(sample.path) as source:
        return build_proof(source, Selector(seq=SEQ))


def trusted(sample: SampleLog) -> TrustedKeys:
    return TrustedKeys.from_genesis(sample.genesis)


def test_proof_verifies_with_the_genesis_keys(sample: SampleLog, proof: dict[str, Any]) -> None:
    """A fresh proof verifies: Merkle path, header, quorum of valid attestations."""
    result = check_proof(proof, trusted(sample))
    assert result.ok, result.problem
    assert (result.seq, result.height) == (SEQ, proof["block"]["height"])
    assert len(result.attested_by) >= sample.genesis.quorum
    assert result.central_bank_signatures >= 1
    assert "proof verifies" in result.describe()


def test_proof_verifies_with_pem_keys_and_a_quorum(
    sample: SampleLog, proof: dict[str, Any], tmp_path: Path
) -> None:
    """Public keys as PEM files and an explicit quorum are enough to check a proof."""
    files = {}
    for bank in sample.genesis.central_banks:
        path = tmp_path / f"{bank.id}.pub.pem"
        path.write_bytes(public_key_to_pem(bank.public_key))
        files[bank.id] = path
    result = check_proof(proof, TrustedKeys.from_pem_files(files, quorum=4))
    assert result.ok, result.problem


def test_proof_round_trips_through_json(sample: SampleLog, proof: dict[str, Any]) -> None:
    """The proof is plain JSON: written and read back, it still verifies."""
    assert check_proof(json.loads(json.dumps(proof)), trusted(sample)).ok


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_proof_from_an_export_equals_the_one_from_the_store(
    sample: SampleLog, proof: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    """An export directory yields the same proof as the store it came from."""
    with open_source(sample.path) as source:
        export_log(source, tmp_path / fmt, fmt)
    with open_source(tmp_path / fmt) as source:
        assert build_proof(source, Selector(seq=SEQ)) == proof


def test_entry_found_by_sender_and_id_or_id_alone(sample: SampleLog, proof: dict[str, Any]) -> None:
    """SENDER/INSTRUCTION_ID and a bare instruction id select the same entry as its seq."""
    instruction = proof["summary"]["instruction"]
    with open_source(sample.path) as source:
        by_pair = build_proof(
            source, Selector.parse(f"{instruction['sender']}/{instruction['instruction_id']}")
        )
        by_id = build_proof(source, Selector.parse(instruction["instruction_id"]))
    assert by_pair == by_id == proof


def test_unknown_entry_is_refused(sample: SampleLog) -> None:
    """Asking for an entry that is not in the log raises a ProofError."""
    with open_source(sample.path) as source, pytest.raises(ProofError, match="not in the log"):
        build_proof(source, Selector.parse("ICBC/no-such-instruction"))


def tamper(proof: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(proof)
    target = changed
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    target[int(last) if last.isdigit() else last] = value(
        target[int(last) if last.isdigit() else last]
    )
    return changed


def _digit_up(text: str) -> str:
    marker = '"valid_until":'
    at = text.index(marker) + len(marker)
    return text[:at] + str(int(text[at]) % 9 + 1) + text[at + 1 :]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("entry.canonical", _digit_up, "Merkle path"),
        ("entry.canonical", lambda t: t.replace(f'"seq":{SEQ}', f'"seq":{SEQ + 1}'), "seq"),
        ("entry.seq", lambda s: s + 1, "seq"),
        ("merkle.path.0", lambda h: ("0" if h[0] != "0" else "1") + h[1:], "Merkle path"),
        ("merkle.leaf_index", lambda i: i + 1, "leaf"),
        ("block.time", lambda t: t + 1, "block hash"),
        ("block.merkle_root", lambda h: "00" + h[2:], "block hash"),
        ("attestations.0.signature", lambda h: ("0" if h[0] != "0" else "1") + h[1:], "signature"),
        ("attestations.0.central_bank", lambda b: "ZZBANK", "not a trusted central bank"),
        ("genesis_hash", lambda h: "00" * 32, "another ledger"),
    ],
)
def test_modified_proof_does_not_verify(
    sample: SampleLog, proof: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    """Changing the entry, its path, the header or an attestation breaks the proof."""
    result = check_proof(tamper(proof, path, value), trusted(sample))
    assert not result.ok
    assert expected in result.problem


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s.update(outcome="REJECTED" if s["outcome"] != "REJECTED" else "SETTLED"),
            "summary.outcome",
        ),
        (lambda s: s.update(time_ms=s["time_ms"] - 1), "summary.time_ms"),
        (
            lambda s: s["instruction"].update(valid_until=s["instruction"]["valid_until"] + 1),
            "summary.instruction.valid_until",
        ),
        (lambda s: s["instruction"].update(amount=10**12), "summary.instruction.amount"),
        (lambda s: s["instruction"].pop("sender"), "summary.instruction.sender is missing"),
        (lambda s: s.clear(), "summary.instruction is missing"),
    ],
)
def test_edited_summary_does_not_verify(
    sample: SampleLog, proof: dict[str, Any], edit: Any, expected: str
) -> None:
    """The readable summary is rebuilt from the signed entry; any edit fails the proof."""
    changed = copy.deepcopy(proof)
    edit(changed["summary"])
    result = check_proof(changed, trusted(sample))
    assert not result.ok
    assert "summary differs from the signed entry" in result.problem
    assert expected in result.problem


def test_proof_without_a_summary_does_not_verify(sample: SampleLog, proof: dict[str, Any]) -> None:
    """A proof stripped of its summary is refused, not read as an empty summary."""
    changed = {k: v for k, v in proof.items() if k != "summary"}
    result = check_proof(changed, trusted(sample))
    assert not result.ok
    assert "summary" in result.problem


def test_chain_id_must_be_the_trusted_genesis_chain(
    sample: SampleLog, proof: dict[str, Any]
) -> None:
    """A proof naming another chain id than the trusted genesis is refused."""
    result = check_proof(dict(proof, chain_id="another-chain"), trusted(sample))
    assert not result.ok
    assert "chain 'another-chain'" in result.problem
    pem_keys = TrustedKeys(trusted(sample).keys, sample.genesis.quorum, chain_id="x")
    assert "chain" in check_proof(proof, pem_keys).problem


def test_proof_against_a_different_block_does_not_verify(
    sample: SampleLog, proof: dict[str, Any]
) -> None:
    """The entry and path of one block checked against another (attested) block fail."""
    with open_source(sample.path) as source:
        other = build_proof(source, Selector(seq=SEQ + 20))
    assert other["block"]["height"] != proof["block"]["height"]
    swapped = dict(proof, block=other["block"], attestations=other["attestations"])
    result = check_proof(swapped, trusted(sample))
    assert not result.ok
    assert "leaf" in result.problem or "Merkle" in result.problem


def test_proof_without_a_quorum_is_not_final(sample: SampleLog, proof: dict[str, Any]) -> None:
    """With fewer attestations than the quorum the proof does not show finality."""
    short = dict(proof, attestations=proof["attestations"][: sample.genesis.quorum - 1])
    result = check_proof(short, trusted(sample))
    assert not result.ok
    assert "not final" in result.problem


def test_proof_of_an_entry_in_the_non_final_tail_fails(sample: SampleLog) -> None:
    """An entry of the last (not yet final) block cannot be proven final."""
    with open_source(sample.path) as source:
        last = build_proof(source, Selector(seq=sample.entries))
    result = check_proof(last, trusted(sample))
    assert not result.ok
    assert "not final" in result.problem


def test_other_keys_do_not_verify(sample: SampleLog, proof: dict[str, Any]) -> None:
    """Checked against other central banks' keys, the attestations do not verify."""
    fake = Genesis(
        sample.genesis.chain_id,
        tuple(
            GenesisBank(
                b.id, b.jurisdiction, PrivateKey.generate().public_key, b.currency, b.exponent
            )
            for b in sample.genesis.central_banks
        ),
        sample.genesis.quorum,
    )
    keys = TrustedKeys(TrustedKeys.from_genesis(fake).keys, fake.quorum)
    result = check_proof(proof, keys)
    assert not result.ok
    assert "does not verify" in result.problem


def test_central_bank_signature_inside_the_entry_is_checked(
    sample: SampleLog, proof: dict[str, Any]
) -> None:
    """An endorsement that does not verify with the trusted key fails the proof."""
    signers = {s[0] for s in json.loads(proof["entry"]["canonical"])["sigs"]}
    endorser = next(b.id for b in sample.genesis.central_banks if b.id in signers)
    keys = dict(trusted(sample).keys)
    keys[endorser] = PrivateKey.generate().public_key
    others = [a for a in proof["attestations"] if a["central_bank"] != endorser]
    result = check_proof(dict(proof, attestations=others), TrustedKeys(keys, sample.genesis.quorum))
    assert not result.ok
    assert f"{endorser}'s signature in the entry" in result.problem


def test_malformed_proof_is_reported(sample: SampleLog) -> None:
    """A document that is not a proof fails with a reason, not an exception."""
    assert "not a" in check_proof({"type": "x"}, trusted(sample)).problem
    broken = {"type": "cbdc-bridge/inclusion-proof", "version": 1, "genesis_hash": ""}
    assert "malformed" in check_proof(broken, TrustedKeys({}, 1)).problem


@pytest.fixture(scope="module")
def heights_attested(sample: SampleLog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample log with the attestations of SEQ's block removed: only later heights attest."""
    path = tmp_path_factory.mktemp("heights") / "log.sqlite"
    shutil.copy(sample.path, path)
    with sqlite3.connect(path) as db:
        (height,) = db.execute("SELECT height FROM entries WHERE seq=?", (SEQ,)).fetchone()
        db.execute("DELETE FROM attestations WHERE height=?", (height,))
    return path


def test_proof_of_a_block_covered_by_a_later_height_carries_the_chain(
    sample: SampleLog, heights_attested: Path
) -> None:
    """A block attested only through later heights is proven final with the headers up to them."""
    with open_source(heights_attested) as source:
        proof = build_proof(source, Selector(seq=SEQ))
    assert proof["chain"], "the later headers the attestations sign"
    assert all(a["height"] > proof["block"]["height"] for a in proof["attestations"])
    result = check_proof(json.loads(json.dumps(proof)), trusted(sample))
    assert result.ok, result.problem
    assert len(result.attested_by) >= sample.genesis.quorum


def test_proof_with_a_broken_chain_does_not_verify(
    sample: SampleLog, heights_attested: Path
) -> None:
    """A chain header that does not link to the block before it voids the later attestations."""
    with open_source(heights_attested) as source:
        proof = build_proof(source, Selector(seq=SEQ))
    broken = copy.deepcopy(proof)
    broken["chain"][0]["merkle_root"] = "00" * 32
    result = check_proof(broken, trusted(sample))
    assert not result.ok
    assert "does not link" in result.problem or "another block hash" in result.problem


@pytest.mark.parametrize("tamper", ["none", "path-of-another-batch", "root-signed-by-another-key"])
def test_proof_checks_an_endorsement_over_a_batch_root(
    sample: SampleLog, tmp_path: Path, tamper: str
) -> None:
    """The proof of an entry endorsed in a batch of three verifies from its own Merkle path
    and the root signature; with the path of another batch or a root signed with another key,
    check-proof names the endorsement."""
    path = tmp_path / "log.sqlite"
    shutil.copy(sample.path, path)
    db = sqlite3.connect(path)
    try:
        signed = batch_of_payments(sample, db, f"proof-{tamper}")
        legs = [(e, "ICBC") for e in signed]
        ours = endorse_legs(legs, "PBOC", sample.keys["PBOC"])
        middle = {
            "none": ours[1],
            "path-of-another-batch": replace(
                ours[1], size=2, path=endorse_legs(legs[:2], "PBOC", sample.keys["PBOC"])[1].path
            ),
            "root-signed-by-another-key": endorse_legs(legs, "PBOC", sample.keys["HKMA"])[1],
        }[tamper]
        seqs = [
            append_entry(db, sample, envelope.with_signature(endorsement), Outcome.SETTLED)
            for envelope, endorsement in zip(signed, [ours[0], middle, ours[2]], strict=True)
        ]
        db.commit()
    finally:
        db.close()
    with open_source(path) as source:
        built = build_proof(source, Selector(seq=seqs[1]))
    result = check_proof(built, trusted(sample))
    if tamper == "none":
        assert result.ok, result.problem
        assert result.central_bank_signatures == 1
    else:
        assert not result.ok
        assert "PBOC's signature in the entry does not verify" in result.problem
