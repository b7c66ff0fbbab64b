"""`cbdc-bridge chaos`: run the fault campaign (or a soak) and print its figures."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def chaos(
    seed: int = typer.Option(
        1, "--seed", help="Seed of the fault schedule (same seed, same faults)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="The short profile (CI): a few faults of each kind."
    ),
    soak: float = typer.Option(
        0.0, "--soak", min=0, help="Instead: hold half the measured max rate for this many seconds."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    directory: Path | None = typer.Option(
        None, "--directory", help="Work here and keep it (default: a temporary directory, removed)."
    ),
) -> None:
    """Kill, cut off, slow down, fill up and time-shift a live network under load; check that
    nothing acknowledged is lost or doubled; print the figures."""
    from participants.chaos.campaign import run_campaign
    from participants.chaos.soak import run_soak

    if soak > 0:
        result = run_soak(seed, soak, directory)
        ok = bool(result["errors"] == 0 and result["checks"]["passed"])
    else:
        result = run_campaign(
            seed, "quick" if quick else "full", directory, keep=directory is not None
        )
        ok = bool(result["all_checks_passed"])
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(json.dumps(result, indent=2))
    if not ok:
        raise typer.Exit(1)
