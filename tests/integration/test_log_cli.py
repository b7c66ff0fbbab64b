"""`cbdc-bridge log ...` and `cbdc-bridge bench verify` end to end: output and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from analysis.sample import SampleLog, SampleOptions, generate
from bridge.crypto import public_key_to_pem
from participants.central_bank.refusals import NodeRefusals
from participants.cli import app

OPTIONS = SampleOptions(entries=80, block_size=16, rate=100.0, seed=17)
runner = CliRunner()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleLog]:
    directory = tmp_path_factory.mktemp("cli-sample")
    yield generate(directory / "log.sqlite", OPTIONS)
    shutil.rmtree(directory, ignore_errors=True)


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_verify_passes_with_a_summary(sample: SampleLog) -> None:
    """`log verify` on a sound store exits 0 and reports counts and finality."""
    code, output = cli("log", "verify", str(sample.path))
    assert code == 0, output
    assert f"{sample.entries:,} entries" in output
    assert f"final blocks: {sample.blocks - 1:,} of {sample.blocks:,}" in output
    assert "warning:" in output


def test_verify_json_is_machine_readable(sample: SampleLog) -> None:
    """`--json` prints one JSON object with the verdict and figures."""
    code, output = cli("log", "verify", str(sample.path), "--json")
    assert code == 0
    result = json.loads(output)
    assert result["ok"] is True
    assert result["entries"] == sample.entries
    assert result["head"]["height"] == sample.blocks


def test_verify_names_the_first_failure_and_exits_1(sample: SampleLog, tmp_path: Path) -> None:
    """A tampered store fails with exit code 1 and the block and entry of the first failure."""
    path = tmp_path / "bad.sqlite"
    shutil.copyfile(sample.path, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET time = time + 5 WHERE seq = 30")
    db.commit()
    db.close()
    code, output = cli("log", "verify", str(path))
    assert code == 1
    assert "verification FAILED at block" in output
    assert "entry 30" in output
    assert "time_ms" in output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("postgresql://bridge@127.0.0.1:1/ledger", "cannot read"),
        ("postgresql+psycopg://bridge@db/ledger", "not supported"),
        ("/no/such/log.sqlite", "no such file"),
    ],
)
def test_unreadable_or_unsupported_source_exits_2(source: str, message: str) -> None:
    """Unreachable or unsupported PostgreSQL URLs and missing files are usage errors: exit code
    2 with the reason."""
    result = runner.invoke(app, ["log", "verify", source])
    assert result.exit_code == 2
    assert message in result.output


def test_trusted_genesis_option(sample: SampleLog, tmp_path: Path) -> None:
    """`log genesis` writes the trust anchor that `verify --trusted-genesis` then requires."""
    genesis = tmp_path / "genesis.json"
    assert cli("log", "genesis", str(sample.path), "--out", str(genesis))[0] == 0
    code, output = cli("log", "verify", str(sample.path), "--trusted-genesis", str(genesis))
    assert code == 0, output
    other = json.loads(genesis.read_text())
    other["quorum"] = 5
    genesis.write_text(json.dumps(other))
    code, output = cli("log", "verify", str(sample.path), "--trusted-genesis", str(genesis))
    assert code == 1
    assert "trusted genesis" in output


def test_prove_and_check_proof(sample: SampleLog, tmp_path: Path) -> None:
    """A proof written by `log prove` passes `log check-proof` with a genesis or PEM keys."""
    proof, genesis = tmp_path / "proof.json", tmp_path / "genesis.json"
    code, output = cli("log", "prove", "25", "--source", str(sample.path), "--out", str(proof))
    assert code == 0, output
    cli("log", "genesis", str(sample.path), "--out", str(genesis))
    code, output = cli("log", "check-proof", str(proof), "--genesis", str(genesis))
    assert code == 0, output
    assert "proof verifies: entry 25" in output
    keys = []
    for bank in sample.genesis.central_banks:
        pem = tmp_path / f"{bank.id}.pub.pem"
        pem.write_bytes(public_key_to_pem(bank.public_key))
        keys += ["--key", f"{bank.id}={pem}"]
    code, output = cli("log", "check-proof", str(proof), *keys, "--quorum", "4")
    assert code == 0, output


def test_tampered_proof_exits_1(sample: SampleLog, tmp_path: Path) -> None:
    """`log check-proof` of a modified proof exits 1 and says why."""
    proof, genesis = tmp_path / "proof.json", tmp_path / "genesis.json"
    cli("log", "prove", "25", "--source", str(sample.path), "--out", str(proof))
    cli("log", "genesis", str(sample.path), "--out", str(genesis))
    data = json.loads(proof.read_text())
    data["block"]["time"] += 1
    proof.write_text(json.dumps(data))
    code, output = cli("log", "check-proof", str(proof), "--genesis", str(genesis))
    assert code == 1
    assert "does NOT verify" in output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["summary"].update(outcome="EXPIRED"), "summary.outcome"),
        (lambda p: p.update(chain_id="another-chain"), "chain"),
    ],
)
def test_edited_summary_or_chain_id_exits_1(
    sample: SampleLog, tmp_path: Path, edit: Any, message: str
) -> None:
    """`log check-proof` refuses an edited summary or a chain id not the genesis's."""
    proof, genesis = tmp_path / "proof.json", tmp_path / "genesis.json"
    cli("log", "prove", "25", "--source", str(sample.path), "--out", str(proof))
    cli("log", "genesis", str(sample.path), "--out", str(genesis))
    data = json.loads(proof.read_text())
    edit(data)
    proof.write_text(json.dumps(data))
    code, output = cli("log", "check-proof", str(proof), "--genesis", str(genesis))
    assert code == 1
    assert "does NOT verify" in output
    assert message in output


def test_prove_reads_the_source_from_the_environment(sample: SampleLog) -> None:
    """`--source` falls back to CBDC_BRIDGE_LOG; the proof goes to stdout."""
    result = runner.invoke(app, ["log", "prove", "3"], env={"CBDC_BRIDGE_LOG": str(sample.path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["entry"]["seq"] == 3


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_then_verify_the_export(sample: SampleLog, tmp_path: Path, fmt: str) -> None:
    """`log export` writes every table and `log verify` accepts the export directory."""
    out = tmp_path / fmt
    code, output = cli(
        "log", "export", "--source", str(sample.path), "--format", fmt, "--out", str(out)
    )
    assert code == 0, output
    assert (out / f"legs.{fmt}").is_file()
    code, output = cli("log", "verify", str(out))
    assert code == 0, output


def test_export_rejects_an_unknown_format(sample: SampleLog, tmp_path: Path) -> None:
    """An unknown `--format` is a usage error."""
    code, _ = cli("log", "export", "-s", str(sample.path), "-f", "xlsx", "-o", str(tmp_path / "x"))
    assert code == 2


def test_report_command_writes_the_report(sample: SampleLog, tmp_path: Path) -> None:
    """`log report` writes report.html, summary.md and the charts."""
    code, output = cli("log", "report", "--source", str(sample.path), "--out", str(tmp_path))
    assert code == 0, output
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "summary.md").read_text().startswith("# Settlement log report")


def node_file(path: Path, central_bank: str, chain_id: str, count: int) -> Path:
    """A central bank node's refusals file with `count` refusals, written as the node writes."""
    refusals = NodeRefusals(path, central_bank=central_bank, chain_id=chain_id)
    for number in range(count):
        refusals.record((1_000 + number, "ICBC", f"pay-{number}", "pay", "BAD_SIGNATURE", ""))
    asyncio.run(refusals.flush())
    refusals.close()
    return path


def test_export_and_report_take_node_refusals(sample: SampleLog, tmp_path: Path) -> None:
    """`--node-refusals` (repeated) adds each node's refusals to the export's refusals table
    and to the report's count; a file of another chain fails the command (exit 1)."""
    chain_id = json.loads(cli("log", "genesis", str(sample.path))[1])["chain_id"]
    pboc = node_file(tmp_path / "PBOC.refusals.sqlite", "PBOC", chain_id, 2)
    hkma = node_file(tmp_path / "HKMA.refusals.sqlite", "HKMA", chain_id, 3)
    out = tmp_path / "export"
    nodes = ("--node-refusals", str(pboc), "--node-refusals", str(hkma))
    code, output = cli(
        "log", "export", "-s", str(sample.path), "-f", "jsonl", "-o", str(out), *nodes
    )
    assert code == 0, output
    rows = [json.loads(line) for line in (out / "refusals.jsonl").read_text().splitlines()]
    by = [row["recorded_by"] for row in rows]
    assert by == ["bridge"] * sample.refused + ["PBOC"] * 2 + ["HKMA"] * 3
    assert f"refusals {sample.refused + 5:,}" in output
    code, output = cli("log", "report", "-s", str(sample.path), "-o", str(tmp_path / "r"), *nodes)
    assert code == 0, output
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert f"| refusals recorded | {sample.refused + 5:,} |" in summary
    stranger = node_file(tmp_path / "other.sqlite", "PBOC", "another-chain", 1)
    code, output = cli(
        "log",
        "export",
        "-s",
        str(sample.path),
        "-o",
        str(tmp_path / "x"),
        "--node-refusals",
        str(stranger),
    )
    assert code == 1
    assert "another-chain" in output


def test_sample_command_makes_a_verifiable_log(tmp_path: Path) -> None:
    """`log sample` generates a log that `log verify` accepts."""
    path = tmp_path / "s.sqlite"
    code, output = cli("log", "sample", str(path), "--entries", "40", "--block-size", "10")
    assert code == 0, output
    assert cli("log", "verify", str(path))[0] == 0


def test_installed_console_script_exit_codes(sample: SampleLog) -> None:
    """The installed `cbdc-bridge` script returns 0, 1 and 2 as documented."""
    script = Path(sys.executable).with_name("cbdc-bridge")
    ok = subprocess.run([script, "log", "verify", str(sample.path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(
        [script, "log", "verify", "postgres://127.0.0.1:1/y"], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_bench_verify_small(tmp_path: Path) -> None:
    """`bench verify --entries N --json` generates, caches and measures a small log."""
    script = Path(sys.executable).with_name("cbdc-bridge")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [script, "bench", "verify", "--entries", "120", "--json"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    figures = json.loads(first.stdout)
    assert figures["verified"] is True
    assert figures["entries"] >= 120
    assert figures["signatures"] == figures["baseline_signatures"]
    assert figures["ratio"] > 0
    assert figures["peak_rss_mib"] < figures["goal_peak_rss_mib"]
    assert "generating" in first.stderr
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0
    assert "generating" not in second.stderr, "the generated log is reused"
    assert json.loads(second.stdout)["generated_seconds"] == 0.0


def test_export_follow_appends_final_blocks_until_told_to_stop(
    sample: SampleLog, tmp_path: Path
) -> None:
    """`log export --follow` appends final blocks and stops at --until-height; `--append`
    then adds nothing new when the log has not grown."""
    out = tmp_path / "followed"
    last_final = sample.blocks - 1
    code, output = cli(
        "log", "export", "--source", str(sample.path), "--out", str(out), "--format", "csv",
        "--follow", "--interval", "0.05", "--until-height", str(last_final), "--no-progress",
    )  # fmt: skip
    assert code == 0, output
    assert f"appended blocks up to {last_final:,}" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"]["height"] == last_final
    code, output = cli("log", "verify", str(out), "--no-progress")
    assert code == 0, output
