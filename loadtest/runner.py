"""Run a Locust scenario headless in a subprocess, read its CSV report, cross-check the ledger.

    python -m loadtest.runner steady --network demo-network --users 50 --seconds 30

runs `locust -f loadtest/scenarios/steady.py --headless ... --csv <reports>/<label>
--html <reports>/<label>.html`, then parses `<label>_stats.csv` into `RunResult` and compares
the run's settlements with the ledger (`loadtest.crosscheck`). The same function runs the echo
baseline and the PvP runs of `cbdc-bridge bench e2e`, with identical Locust settings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loadtest.crosscheck import CrossCheck, crosscheck
from loadtest.settings import new_run_id
from participants.launcher import free_ports

__all__ = [
    "SCENARIOS",
    "LocustSettings",
    "RunResult",
    "StatsRow",
    "read_stats",
    "run_locust",
    "run_scenario",
    "scenario_path",
]

ROOT = Path(__file__).resolve().parent
SCENARIOS = ("steady", "burst", "hotspot", "liquidity", "large", "echo")
SETTLEMENT = "settlement"
RPC_TYPES = frozenset({"grpc", "refused"})
SHAPE_LIMIT_S = 3600.0  # run-time bound for scenarios whose shape decides when to stop
PERCENTILES = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "100%")


def scenario_path(name: str) -> Path:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    return ROOT / "scenarios" / f"{name}.py"


@dataclass(frozen=True, slots=True)
class LocustSettings:
    """The Locust knobs every run of one benchmark shares."""

    users: int = 50
    spawn_rate: float = 50.0
    seconds: float = 15.0
    processes: int = 1  # >1: Locust's --processes (one master, N worker processes)
    stop_timeout: float = 15.0

    def arguments(self, master_port: int | None = None) -> list[str]:
        """Locust's arguments; with --processes, the master listens on `master_port` (a free
        port chosen per run when not given) on 127.0.0.1 only."""
        args = [
            "-u", str(self.users),
            "-r", str(self.spawn_rate),
            "--graceful-run-time", str(self.seconds),
            "--stop-timeout", f"{max(1, round(self.stop_timeout))}s",
        ]  # fmt: skip
        if self.processes > 1:
            # Locust's default master port (5557) is shared by every Locust on the machine:
            # another run's workers (or this run's, with another run's master) would connect
            # to the wrong master, whose report then counts settlements of another network
            port = master_port if master_port is not None else free_ports(1)[0]
            args += [
                "--processes", str(self.processes),
                "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                "--master-host", "127.0.0.1", "--master-port", str(port),
            ]  # fmt: skip
        return args


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One line of Locust's `_stats.csv`."""

    type: str
    name: str
    requests: int
    failures: int
    average_ms: float
    requests_per_s: float
    percentiles_ms: Mapping[str, float]

    def percentile(self, label: str) -> float:
        return self.percentiles_ms.get(label, 0.0)


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished headless run: its figures, reports and cross-check."""

    label: str
    run_id: str
    rows: tuple[StatsRow, ...]
    csv_prefix: Path
    html: Path
    exit_code: int
    wall_seconds: float
    check: CrossCheck | None = None
    output: str = field(default="", repr=False)

    def rows_of(self, request_type: str, names: frozenset[str] | None = None) -> list[StatsRow]:
        return [
            r for r in self.rows if r.type == request_type and (names is None or r.name in names)
        ]

    def count(self, request_type: str, names: frozenset[str] | None = None) -> int:
        return sum(r.requests for r in self.rows_of(request_type, names))

    def rate(self, request_type: str, names: frozenset[str] | None = None) -> float:
        return sum(r.requests_per_s for r in self.rows_of(request_type, names))

    @property
    def rpcs(self) -> int:
        return sum(r.requests for r in self.rows if r.type in RPC_TYPES)

    @property
    def rpc_per_s(self) -> float:
        return sum(r.requests_per_s for r in self.rows if r.type in RPC_TYPES)

    @property
    def settlements(self) -> int:
        return self.count(SETTLEMENT)

    @property
    def unexpected_failures(self) -> int:
        return sum(r.failures for r in self.rows)

    @property
    def refused(self) -> int:
        return self.count("refused")

    @property
    def ok(self) -> bool:
        return self.unexpected_failures == 0 and (self.check is None or self.check.ok)

    def summary(self) -> str:
        lines = [
            f"{self.label}: {self.rpcs} RPCs ({self.rpc_per_s:.0f}/s), "
            f"{self.settlements} settlements, {self.refused} expected refusals, "
            f"{self.unexpected_failures} failures; report {self.html}"
        ]
        for row in self.rows_of(SETTLEMENT):
            lines.append(
                f"  settlement {row.name}: {row.requests} ({row.requests_per_s:.0f}/s), "
                f"p50 {row.percentile('50%'):.0f} ms, p95 {row.percentile('95%'):.0f} ms, "
                f"p99 {row.percentile('99%'):.0f} ms"
            )
        if self.check is not None:
            lines.append(f"  {self.check.describe()}")
        return "\n".join(lines)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_stats(path: Path) -> tuple[StatsRow, ...]:
    """Rows of a `_stats.csv`, without the Aggregated total."""
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            if raw["Name"] == "Aggregated":
                continue
            rows.append(
                StatsRow(
                    type=raw["Type"],
                    name=raw["Name"],
                    requests=int(raw["Request Count"]),
                    failures=int(raw["Failure Count"]),
                    average_ms=_number(raw["Average Response Time"]),
                    requests_per_s=_number(raw["Requests/s"]),
                    percentiles_ms={p: _number(raw.get(p, "")) for p in PERCENTILES},
                )
            )
    return tuple(rows)


def run_locust(
    locustfile: Path,
    *,
    label: str,
    reports: Path,
    settings: LocustSettings,
    network: Path | None = None,
    host: str = "",
    env: Mapping[str, str] | None = None,
    tags: tuple[str, ...] = (),
    check: bool = True,
    verify_log: bool = True,
) -> RunResult:
    """Run one headless Locust test; cross-check it against `network` unless `check` is off.

    Locust runs from the project root (so its locustfile imports the project): every path it
    is handed is made absolute first, so relative paths mean the caller's working directory."""
    locustfile, reports = locustfile.resolve(), reports.resolve()
    network = network.resolve() if network is not None else None
    reports.mkdir(parents=True, exist_ok=True)
    prefix = reports / label
    html = reports / f"{label}.html"
    run_id = (env or {}).get("LOADTEST_RUN_ID") or new_run_id()
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        *settings.arguments(),
        "--csv", str(prefix), "--html", str(html),
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    if host:
        command += ["--host", host]
    if tags:
        command += ["--tags", *tags]
    child_env = {
        **os.environ,
        **(env or {}),
        "LOADTEST_RUN_ID": run_id,
        "LOADTEST_CROSSCHECK": "0",  # checked here, from the report
        "PYTHONUNBUFFERED": "1",
    }
    if network is not None:
        child_env["BRIDGE_NETWORK"] = str(network)
    started = time.monotonic()
    completed = subprocess.run(
        command,
        env=child_env,
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=settings.seconds + settings.stop_timeout + 120,
        check=False,
    )
    wall = time.monotonic() - started
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        raise RuntimeError(
            f"locust wrote no report (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    rows = read_stats(stats)
    result = RunResult(
        label, run_id, rows, prefix, html, completed.returncode, wall, output=completed.stderr
    )
    if check and network is not None:
        verdict = crosscheck(network, run_id, result.settlements, verify=verify_log)
        result = RunResult(
            label, run_id, rows, prefix, html, completed.returncode, wall, verdict, completed.stderr
        )
    return result


class _HasDirectory(Protocol):
    @property
    def directory(self) -> Path: ...


def run_scenario(
    name: str,
    network: Path | _HasDirectory,
    *,
    seconds: float = 15.0,
    users: int = 20,
    spawn_rate: float | None = None,
    processes: int = 1,
    reports: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RunResult:
    """Run scenario `name` against a running network and cross-check it."""
    directory = network if isinstance(network, Path) else network.directory
    if name == "burst":
        seconds = max(seconds, SHAPE_LIMIT_S)  # its LoadTestShape ends the test itself
    settings = LocustSettings(
        users=users,
        spawn_rate=spawn_rate or float(users),
        seconds=seconds,
        processes=processes,
    )
    return run_locust(
        scenario_path(name),
        label=name,
        reports=reports or directory / "reports",
        settings=settings,
        network=directory,
        env=env,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[s for s in SCENARIOS if s != "echo"])
    parser.add_argument("--network", type=Path, default=Path("demo-network"))
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--reports", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print figures as one JSON object")
    options = parser.parse_args(argv)
    result = run_scenario(
        options.scenario,
        options.network,
        seconds=options.seconds,
        users=options.users,
        spawn_rate=options.spawn_rate or None,
        processes=options.processes,
        reports=options.reports,
    )
    if options.json:
        print(json.dumps(result_json(result)))
    else:
        print(result.summary())
    return 0 if result.ok else 1


def result_json(result: RunResult) -> dict[str, Any]:
    return {
        "label": result.label,
        "run_id": result.run_id,
        "rpcs": result.rpcs,
        "rpc_per_s": round(result.rpc_per_s, 1),
        "settlements": result.settlements,
        "refused": result.refused,
        "failures": result.unexpected_failures,
        "report": str(result.html),
        "crosscheck": None if result.check is None else result.check.to_json(),
    }


if __name__ == "__main__":
    sys.exit(main())
