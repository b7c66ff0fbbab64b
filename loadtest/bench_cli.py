"""`cbdc-bridge bench ...`: benchmark commands that print one JSON object of figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def submit_batch_option() -> Any:
    """`--batch` of the benchmarks that stream PvPs through `CentralBank.SubmitStream`: its
    default is bench_stream.DEFAULT_BATCH, its maximum the node's `instructions` bound (kept
    as literals so the CLI starts without those modules; a unit test holds them equal)."""
    return typer.Option(
        64,
        "--batch",
        min=1,
        max=1024,
        help="PvPs per SubmitStream message, answered together (1: one message per PvP).",
    )


bench_app = typer.Typer(
    help="Benchmarks: print figures as JSON (ratios against a same-run baseline).",
    no_args_is_help=True,
)


@bench_app.command("core")
def core(
    pvps: int = typer.Option(20_000, "--pvps", min=1, help="Dual-signed PvPs to settle."),
    batch: int = typer.Option(100, "--batch", min=1, help="PvPs per block (one commit each)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Settlement core vs raw SQLite and bare signature checks, in one process and one run."""
    from loadtest import bench_core

    figures = bench_core.run(pvps=pvps, batch=batch)
    typer.echo(json.dumps(figures) if as_json else bench_core.describe(figures))


@bench_app.command("verify")
def verify(
    entries: int = typer.Option(
        1_000_000, "--entries", min=10, help="Entries in the generated (cached) sample log."
    ),
    regenerate: bool = typer.Option(False, "--regenerate", help="Regenerate the cached log."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Offline log verification vs raw SHA-256 + P-256 verify of the same data; peak memory."""
    from loadtest import bench_verify

    def status(message: str) -> None:
        typer.echo(message, err=True)

    figures = bench_verify.run(entries, regenerate=regenerate, status=status)
    typer.echo(json.dumps(figures) if as_json else bench_verify.describe(figures))


@bench_app.command("restart")
def restart(
    entries: int = typer.Option(20_000, "--entries", min=10, help="Entries in the sample log."),
    tail: int = typer.Option(
        1_000, "--tail", min=0, help="Entries sealed after the checkpoint was written."
    ),
    full: bool = typer.Option(
        True, "--full/--no-full", help="Also time a replay of every block (no checkpoint)."
    ),
    bridge: bool = typer.Option(
        True, "--bridge/--no-bridge", help="Also settle the log on a bridge store (memory)."
    ),
    log: Path | None = typer.Option(
        None, "--log", help="A sample log to use instead of the cached one of --entries."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Restart to attesting (replaying everything vs from checkpoint) and memory (RSS after
    10,000 entries vs after all) of a central bank replica and of the bridge."""
    from loadtest import bench_restart

    figures = bench_restart.run(entries=entries, tail=tail, full=full, bridge=bridge, log=log)
    typer.echo(json.dumps(figures) if as_json else bench_restart.describe(figures))


@bench_app.command("replay")
def replay(
    pvps: int = typer.Option(10_000, "--pvps", min=1, help="Dual-signed PvPs in the log."),
    block: int = typer.Option(
        40, "--block", "--entries-per-block", min=1, help="Entries per block (4: the e2e shape)."
    ),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Rounds of every measurement."),
    replica_check: list[str] = typer.Option(
        ["none", "endorsements"],
        "--replica-check",
        help="Replica signature checks to time (repeatable): none, endorsements, all.",
    ),
    profile: Path | None = typer.Option(
        None, "--profile", help="Also write a cProfile of one replay (first check level) here."
    ),
    checkpoint: bool = typer.Option(
        False, "--checkpoint", help="Replay with a checkpoint file, as a node does by default."
    ),
    known: float = typer.Option(
        0.0,
        "--known",
        min=0.0,
        max=1.0,
        help="Share of the PvPs decoded at the node's edge before their block (bench stream: 0.5).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """A central bank replica's CPU per replayed entry vs json.loads + SHA-256 of the same bytes."""
    from loadtest import bench_replay

    figures = bench_replay.run(
        pvps=pvps,
        block=block,
        rounds=rounds,
        checks=replica_check,
        profile=profile,
        checkpoint=checkpoint,
        known=known,
    )
    typer.echo(json.dumps(figures) if as_json else bench_replay.describe(figures))


@bench_app.command("e2e")
def e2e(
    users: int = typer.Option(50, "--users", min=1, help="Locust users (echo and PvP runs)."),
    spawn_rate: float = typer.Option(
        0, "--spawn-rate", help="Users started per second (0: all at once)."
    ),
    seconds: float = typer.Option(15.0, "--seconds", min=1, help="Length of each Locust run."),
    processes: int = typer.Option(1, "--processes", min=1, help="Locust load-generator processes."),
    half_users: int = typer.Option(
        10, "--half-users", min=1, help="Users of the paced half-rate (latency) run."
    ),
    replica_check: str = typer.Option(
        "none",
        "--replica-check",
        help="Central bank replicas' signature checks: none, endorsements, all.",
    ),
    reports: Path | None = typer.Option(
        None, "--reports", help="Directory for Locust CSV/HTML reports."
    ),
    profile: Path | None = typer.Option(
        None, "--profile", help="Record py-spy flame graphs of every node during the max run here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Locust PvP settlements/s through a real network vs a gRPC echo in the same run."""
    from loadtest import bench_e2e
    from loadtest.runner import LocustSettings

    settings = bench_e2e.E2eSettings(
        locust=LocustSettings(
            users=users, spawn_rate=spawn_rate or float(users), seconds=seconds, processes=processes
        ),
        half_users=half_users,
        replica_check=replica_check,
        reports=reports,
        profile=profile,
    )
    figures = bench_e2e.run(settings)
    typer.echo(json.dumps(figures) if as_json else bench_e2e.describe(figures))


@bench_app.command("postgres")
def postgres(
    pvps: int = typer.Option(10_000, "--pvps", min=1, help="Dual-signed PvPs to stream."),
    window: int = typer.Option(256, "--window", min=1, help="PvPs in flight per stream."),
    batch: int = submit_batch_option(),
    pgbench_seconds: float = typer.Option(
        10.0, "--pgbench-seconds", min=1, help="Length of the pgbench run."
    ),
    bridges: int = typer.Option(2, "--bridges", min=2, help="Bridge processes on the database."),
    kills: int = typer.Option(5, "--kills", min=0, help="Times the leader is SIGKILLed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """The bridge on PostgreSQL vs pgbench (PvP-shaped SQL) on the same server; failover."""
    from loadtest import bench_postgres

    settings = bench_postgres.PostgresBenchSettings(
        pvps=pvps,
        window=window,
        batch=batch,
        pgbench_seconds=pgbench_seconds,
        bridges=bridges,
        kills=kills,
    )
    figures = bench_postgres.run(settings)
    typer.echo(json.dumps(figures) if as_json else bench_postgres.describe(figures))


@bench_app.command("stream")
def stream(
    pvps: int = typer.Option(20_000, "--pvps", min=1, help="Dual-signed PvPs to stream."),
    window: int = typer.Option(512, "--window", min=1, help="PvPs in flight per stream."),
    batch: int = submit_batch_option(),
    echo_seconds: float = typer.Option(10.0, "--echo-seconds", min=1, help="Echo run length."),
    replica_check: str = typer.Option(
        "none",
        "--replica-check",
        help="Central bank replicas' signature checks: none, endorsements, all.",
    ),
    profile: Path | None = typer.Option(
        None, "--profile", help="Record py-spy flame graphs of every node while streaming."
    ),
    prefill: int = typer.Option(
        0,
        "--prefill",
        min=0,
        help="Measure --pvps on the fresh log, stream this many more untimed, measure again.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Dual-signed PvPs over CentralBank.SubmitStream vs a bidi-stream echo in the same run."""
    from loadtest import bench_stream

    settings = bench_stream.StreamSettings(
        pvps=pvps,
        window=window,
        batch=batch,
        echo_seconds=echo_seconds,
        replica_check=replica_check,
        profile=profile,
        prefill=prefill,
    )
    figures = bench_stream.run(settings)
    typer.echo(json.dumps(figures) if as_json else bench_stream.describe(figures))


@bench_app.command("fuzz")
def fuzz(
    requests: int = typer.Option(10_000, "--requests", min=1, help="Requests to send."),
    seed: int = typer.Option(0, "--seed", help="Hypothesis seed (same seed, same requests)."),
    batch: int = typer.Option(50, "--batch", min=1, help="Requests between two state checks."),
    network: Path | None = typer.Option(
        None, "--network", help="Fuzz this running network (default: start a fresh one)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """Property-based fuzzing of every RPC of every node with protobuf messages and raw bytes."""
    from loadtest import fuzz as fuzzer

    settings = fuzzer.FuzzSettings(requests=requests, seed=seed, batch=batch, network=network)
    figures = fuzzer.run(settings)
    typer.echo(json.dumps(figures) if as_json else fuzzer.describe(figures))
    bad = figures["unknown_or_internal"] + figures["state_changes_after_refusals"]
    if bad + figures["restarts_or_hangs"]:
        raise typer.Exit(1)


@bench_app.command("flood")
def flood(
    calls: int = typer.Option(4_000, "--calls", min=1, help="Payments sent at once to one node."),
    deadline: float = typer.Option(30.0, "--deadline", min=0.1, help="Each call's deadline (s)."),
    max_in_flight: int = typer.Option(
        256, "--max-in-flight", min=1, help="Every node's bound on unary calls in flight."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """A burst of concurrent payments on one node: how each was answered, none lost."""
    from loadtest import bench_flood

    settings = bench_flood.FloodSettings(
        calls=calls, deadline_s=deadline, max_in_flight=max_in_flight
    )
    figures = bench_flood.run(settings)
    typer.echo(json.dumps(figures) if as_json else bench_flood.describe(figures))


@bench_app.command("events")
def events(
    users: int = typer.Option(50, "--users", min=1, help="Locust users (full-rate runs)."),
    seconds: float = typer.Option(15.0, "--seconds", min=1, max=20, help="Length of each run."),
    half_users: int = typer.Option(
        10, "--half-users", min=1, help="Users of the paced half-rate (latency) run."
    ),
    reports: Path | None = typer.Option(
        None, "--reports", help="Directory for Locust CSV/HTML reports."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object only."),
) -> None:
    """MQTT notifications: PvP/s with and without the publisher, settlement-to-delivery latency."""
    from loadtest import bench_events
    from loadtest.runner import LocustSettings

    settings = bench_events.EventsSettings(
        locust=LocustSettings(users=users, spawn_rate=float(users), seconds=seconds),
        half_users=half_users,
        reports=reports,
    )
    figures = bench_events.run(settings)
    typer.echo(json.dumps(figures) if as_json else bench_events.describe(figures))
