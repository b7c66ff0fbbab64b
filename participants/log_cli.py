"""`cbdc-bridge log ...`: verify, prove, export and report on the settlement log.

SOURCE is a SQLite store file, an export directory, or a postgresql:// URL.
Commands that take `--source` also read it from the environment variable CBDC_BRIDGE_LOG.

Exit codes: 0 the check passed (warnings allowed), 1 the log or proof failed a check (or a
node refused), 2 the source could not be opened or the command was used wrongly, 3 a node was
unavailable (`log head`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bridge.errors import BridgeError, LogIntegrityError
from bridge.log.source import FORMATS, LogSource, SourceError, open_source

if TYPE_CHECKING:
    from bridge.log.proof import TrustedKeys
    from bridge.log.verify import VerifyReport

# The commands import what they use (matplotlib, DuckDB, the verifier) when they run, so the
# `cbdc-bridge` command line starts quickly whatever the command.

log_app = typer.Typer(
    help="Verify, prove, export and study the settlement log.", no_args_is_help=True
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
SOURCE_ENV = "CBDC_BRIDGE_LOG"

_stderr = Console(stderr=True)
_stdout = Console(highlight=False, soft_wrap=True)

SourceOption = typer.Option(
    ...,
    "--source",
    "-s",
    envvar=SOURCE_ENV,
    help="SQLite store file, export directory, or postgresql:// URL.",
)
ProgressOption = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr.")
NodeRefusalsOption = typer.Option(
    [],
    "--node-refusals",
    help="A central bank node's refusals file (<network>/state/<CB>.refusals.sqlite): its "
    "refusals join the bridge's in the refusals table. Repeat for each node.",
)


def _open(spec: str) -> LogSource:
    try:
        return open_source(spec)
    except SourceError as exc:
        _stderr.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


@contextmanager
def _progress(enabled: bool, what: str, total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr counting entries; yields the callback to feed it."""
    if not enabled or not _stderr.is_terminal:
        yield None
        return
    columns = (
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("entries"),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_stderr, transient=True) as progress:
        task = progress.add_task(what, total=total or None)

        def update(entries: int, blocks: int) -> None:
            progress.update(task, completed=entries)

        yield update


def _describe(report: VerifyReport) -> None:
    if report.ok:
        _stdout.print(
            f"[green]verified[/green] {report.source}: {report.blocks:,} blocks, "
            f"{report.entries:,} entries, {report.signatures:,} signatures "
            f"({report.attestations:,} attestations) in {report.seconds:.1f} s"
        )
    else:
        failure = report.failures[0]
        _stdout.print(f"[red]verification FAILED[/red] at {failure.where}:")
        _stdout.print(f"  {failure.message}")
        _stdout.print(
            f"  checked before the failure: {report.blocks:,} blocks, {report.entries:,} entries"
        )
    _stdout.print(
        f"  chain {report.chain_id}, genesis {report.genesis_hash[:16]}..., "
        f"head block {report.head_height} {report.head_hash[:16]}..."
    )
    _stdout.print(f"  final blocks: {report.final_blocks:,} of {report.blocks:,}")
    for warning in report.warnings:
        _stdout.print(f"[yellow]warning:[/yellow] {warning}")


@log_app.command("verify")
def verify(
    source: str = typer.Argument(
        ..., envvar=SOURCE_ENV, help="SQLite store file, export directory, or postgresql:// URL."
    ),
    trusted_genesis: Path | None = typer.Option(
        None,
        "--trusted-genesis",
        help="Genesis JSON obtained out of band: the log's genesis (central bank keys, quorum) "
        "must be this one.",
    ),
    head_file: Path | None = typer.Option(
        None,
        "--head",
        help="Signed head from `cbdc-bridge log head`: the log must reach that block and hold "
        "exactly it (a log cut short fails).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    progress: bool = ProgressOption,
) -> None:
    """Check the hash chain, Merkle roots, attestations, every signature, conservation, and
    that every state table of a store equals the replay of the log."""
    from bridge.domain import Genesis
    from bridge.log.head import HeadError, SignedHead
    from bridge.log.verify import verify_log

    head = None
    if head_file is not None:
        try:
            head = SignedHead.from_json(json.loads(head_file.read_bytes()))
        except (OSError, ValueError, HeadError) as exc:
            raise typer.BadParameter(
                f"cannot read a signed head from {head_file}: {exc}", param_hint="--head"
            ) from exc

    trusted = None
    if trusted_genesis is not None:
        try:
            trusted = Genesis.from_fields(json.loads(trusted_genesis.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise typer.BadParameter(
                f"cannot read a genesis from {trusted_genesis}: {exc}",
                param_hint="--trusted-genesis",
            ) from exc
    with _open(source) as log:
        try:
            total = log.counts().entries
        except (LogIntegrityError, BridgeError, OSError):
            total = 0
        with _progress(progress, "verifying", total) as update:
            report = verify_log(log, trusted_genesis=trusted, head=head, on_progress=update)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        _describe(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@log_app.command("head")
def head_command(
    bank: str = typer.Option(
        ..., "--bank", "-b", envvar="CBDC_BRIDGE_BANK", help="Bank whose key signs the query."
    ),
    network: Path = typer.Option(
        Path("demo-network"), "--network", help="Network directory (network.json, keys/, pki/)."
    ),
    central_bank: str | None = typer.Option(
        None, "--central-bank", help="Node to ask (default: the bank's home central bank)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here (default: stdout)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait."),
) -> None:
    """Fetch the latest block a central bank node replayed and attested (signed), for
    `log verify --head`: a copy of the log that ends before it has been cut short."""
    from participants.sdk import BankClient, BridgeRpcError

    try:
        client = BankClient.from_network(network, bank, central_bank=central_bank)
    except (OSError, KeyError, ValueError) as exc:
        _stderr.print(f"[red]error:[/red] cannot load the network or the key of {bank}: {exc}")
        raise typer.Exit(EXIT_USAGE) from exc
    with client:
        try:
            head = client.signed_head(timeout=timeout)
        except BridgeRpcError as exc:
            _stderr.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_UNAVAILABLE if exc.reason.retryable else EXIT_FAILED) from exc
    text = json.dumps(head.to_json(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        _stderr.print(
            f"signed head: block {head.height} attested by {head.central_bank}, written to {out}"
        )


@log_app.command("prove")
def prove(
    entry_id: str = typer.Argument(
        ...,
        metavar="ID",
        help="Entry seq (123), SENDER/INSTRUCTION_ID, or an INSTRUCTION_ID only one sender used.",
    ),
    source: str = SourceOption,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the proof here (default: stdout)."
    ),
) -> None:
    """Write an inclusion proof: entry, Merkle path, block header and attestations (JSON)."""
    from bridge.log.proof import ProofError, Selector, build_proof

    with _open(source) as log:
        try:
            proof = build_proof(log, Selector.parse(entry_id))
        except (ProofError, LogIntegrityError) as exc:
            _stderr.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_FAILED) from exc
    text = json.dumps(proof, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        block = proof["block"]
        _stderr.print(
            f"proof of entry {proof['entry']['seq']} in block {block['height']} "
            f"({len(proof['attestations'])} attestations) written to {out}"
        )


def _trusted(
    genesis: Path | None, keys: list[str], quorum: int | None, chain_id: str | None
) -> TrustedKeys:
    from dataclasses import replace

    from bridge.log.proof import TrustedKeys

    if genesis is not None:
        if keys:
            raise typer.BadParameter("give either --genesis or --key, not both")
        trusted = TrustedKeys.from_genesis_file(genesis)
        if chain_id is not None and chain_id != trusted.chain_id:
            raise typer.BadParameter(f"--chain-id {chain_id!r} is not the genesis's chain id")
        return trusted
    if not keys or quorum is None:
        raise typer.BadParameter("give --genesis FILE, or --key CB=PEM (repeated) and --quorum N")
    files = {}
    for item in keys:
        bank, sep, path = item.partition("=")
        if not sep or not bank or not path:
            raise typer.BadParameter(f"--key expects CENTRAL_BANK=PEM_FILE, got {item!r}")
        files[bank] = Path(path)
    return replace(TrustedKeys.from_pem_files(files, quorum), chain_id=chain_id)


@log_app.command("check-proof")
def check_proof_command(
    proof_file: Path = typer.Argument(..., metavar="FILE", exists=True, dir_okay=False),
    genesis: Path | None = typer.Option(
        None, "--genesis", help="Trusted genesis JSON (central bank keys and quorum)."
    ),
    key: list[str] = typer.Option(
        [], "--key", help="Trusted central bank key as CENTRAL_BANK=PUBLIC_KEY.pem (repeat)."
    ),
    quorum: int | None = typer.Option(None, "--quorum", min=1, help="Quorum, with --key."),
    chain_id: str | None = typer.Option(
        None, "--chain-id", help="Trusted chain id, with --key (a genesis names its own)."
    ),
) -> None:
    """Verify an inclusion proof with only the central banks' public keys.

    The proof's chain id must be the trusted one, and its readable summary must be exactly
    what the signed entry says."""
    from bridge.log.proof import check_proof

    try:
        trusted = _trusted(genesis, key, quorum, chain_id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise typer.BadParameter(f"cannot read the trusted keys: {exc}") from exc
    try:
        proof = json.loads(proof_file.read_bytes())
    except ValueError as exc:
        _stdout.print(f"[red]proof does NOT verify:[/red] not JSON ({exc})")
        raise typer.Exit(EXIT_FAILED) from exc
    result = check_proof(proof, trusted)
    color = "green" if result.ok else "red"
    _stdout.print(f"[{color}]{result.describe()}[/{color}]")
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@log_app.command("export")
def export(
    source: str = SourceOption,
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="csv, jsonl or parquet (default jsonl; appending: as is)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="New (or empty) directory to write."),
    append: bool = typer.Option(
        False, "--append", help="Add the blocks after the head of the export in --out."
    ),
    from_height: int = typer.Option(
        1, "--from-height", min=1, help="Start at this block (a partial export)."
    ),
    from_seq: int | None = typer.Option(
        None, "--from-seq", min=1, help="Start at the block holding this entry."
    ),
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Keep appending blocks as they become final (Ctrl-C stops); implies --append.",
    ),
    interval: float = typer.Option(2.0, "--interval", min=0.05, help="Seconds between polls."),
    until_height: int | None = typer.Option(
        None, "--until-height", min=1, help="With --follow: stop once the export reaches it."
    ),
    node_refusals: list[Path] = NodeRefusalsOption,
    progress: bool = ProgressOption,
) -> None:
    """Write entries, legs, blocks, attestations and balance history as tidy tables, with
    their data dictionary (datapackage.json); or extend an export incrementally."""
    from analysis.export import ExportError, ExportFollower, export_log

    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    extending = append or follow
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is not a directory", param_hint="--out")
    if not extending and out.exists() and any(out.iterdir()):
        raise typer.BadParameter(
            f"{out} exists and is not an empty directory (--append extends an export)",
            param_hint="--out",
        )
    follower = ExportFollower() if follow else None  # keeps the replay between polls
    starts_later = from_height != 1 or from_seq is not None
    if extending and starts_later and out.exists() and any(out.iterdir()):
        raise typer.BadParameter("--from-height/--from-seq start a new export, not an append")
    while True:
        # appending keeps the export's own format; a new export is JSONL unless told
        export_fmt = fmt or (None if (out / "manifest.json").is_file() else "jsonl")
        with (
            _open(source) as log,
            _progress(progress and not follow, "exporting", log.counts().entries) as update,
        ):
            try:
                summary = export_log(
                    log,
                    out,
                    export_fmt,
                    on_progress=update,
                    append=extending,
                    from_height=from_height,
                    from_seq=from_seq,
                    final_only=follow,
                    follower=follower,
                    node_refusals=node_refusals,
                )
            except ExportError as exc:
                _stderr.print(f"[red]export failed:[/red] {exc}")
                raise typer.Exit(EXIT_FAILED) from exc
        if not follow:
            counts = ", ".join(f"{name} {n:,}" for name, n in summary.counts.items())
            what = "appended to" if extending else "exported"
            _stdout.print(f"{what} {summary.format} {summary.directory}: {counts}")
            return
        if summary.new_blocks:
            _stdout.print(
                f"appended blocks up to {summary.head_height:,} "
                f"(+{summary.new_rows.get('entries', 0):,} entries)"
            )
        if until_height is not None and summary.head_height >= until_height:
            return
        time.sleep(interval)


@log_app.command("report")
def report(
    source: str = SourceOption,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for report.html and charts."),
    node_refusals: list[Path] = NodeRefusalsOption,
    progress: bool = ProgressOption,
) -> None:
    """HTML report with PNG charts (throughput, latency, corridors, FX, liquidity, refusals)."""
    from analysis.export import ExportError
    from analysis.report import build_report

    with _open(source) as log, _progress(progress, "reading", log.counts().entries) as update:
        try:
            files = build_report(log, out, on_progress=update, node_refusals=node_refusals)
        except ExportError as exc:
            _stderr.print(f"[red]report failed:[/red] {exc}")
            raise typer.Exit(EXIT_FAILED) from exc
    _stdout.print(f"report written: {files.html} ({len(files.charts)} charts), {files.summary}")


@log_app.command("genesis")
def genesis_command(
    source: str = typer.Argument(..., envvar=SOURCE_ENV, help="SQLite store or export directory."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here (default: stdout)."),
) -> None:
    """Print the log's genesis (central banks, keys, quorum): publish it as the trust anchor."""
    with _open(source) as log:
        try:
            data = log.genesis().canonical_bytes() + b"\n"
        except LogIntegrityError as exc:
            _stderr.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_FAILED) from exc
    if out is None:
        typer.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)


@log_app.command("sample")
def sample(
    out: Path = typer.Argument(..., help="New SQLite file to write."),
    entries: int = typer.Option(2_000, "--entries", min=10, help="About this many entries."),
    rate: float = typer.Option(200.0, "--rate", min=1.0, help="Logical entries per second."),
    block_size: int = typer.Option(100, "--block-size", min=1, help="Instructions per block."),
    seed: int = typer.Option(7, "--seed", help="Seed of keys and workload."),
) -> None:
    """Generate a sample log of the mBridge corridor, signed with real keys, to try the tools."""
    from analysis.sample import SampleOptions, generate

    if out.exists():
        raise typer.BadParameter(f"{out} already exists", param_hint="OUT")
    options = SampleOptions(entries=entries, rate=rate, block_size=block_size, seed=seed)
    log = generate(out, options)
    _stdout.print(
        f"{log.path}: {log.entries:,} entries in {log.blocks:,} blocks, {log.refused:,} refused"
    )
