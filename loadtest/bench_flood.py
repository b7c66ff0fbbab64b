"""`cbdc-bridge bench flood`: a burst of concurrent unary calls on one central bank node.

One run, one machine: a fresh network is started (every node with `--max-in-flight`) and
funded; `calls` payments are signed beforehand, then sent to the first central bank's node all
at once from one asyncio client (over a few channels), each with a `deadline_s` deadline. The
figures say how every call was answered (status codes; latency percentiles per code, shed calls
included), how many payments the log holds (none twice), how many of the calls that timed out
had settled anyway, and whether the node still answers its health check SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Envelope, Pay
from bridge.signing import sign_as_party
from loadtest.funding import fund_banks
from loadtest.settings import new_run_id
from participants.launcher import prepare_network

__all__ = ["FloodSettings", "describe", "run"]

CHANNELS = 4
VALID_FOR_MS = 30 * 60_000


@dataclass(frozen=True, slots=True)
class FloodSettings:
    calls: int = 4_000
    deadline_s: float = 30.0
    max_in_flight: int = 256


def run(settings: FloodSettings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as directory:
        network = prepare_network(Path(directory))
        for node in (network.bridge, *network.central_banks.values()):
            node.args += ["--max-in-flight", str(settings.max_in_flight)]
        with network:
            config = network.config
            fund_banks(config)
            home = config.central_banks[0]
            payer, payee = home.banks[0].id, home.banks[1].id
            requests = _payments(config.load_key(payer), payer, payee, home.currency, settings)
            started = time.monotonic()
            outcomes = asyncio.run(_send_all(home.address, requests, settings.deadline_s))
            wall = time.monotonic() - started
            serving = _serving(home.address)
            network.stop()  # every block committed before the log is read
            counts = _log_counts(config.bridge_db, payer)
    return _figures(settings, requests, outcomes, counts, wall, serving)


def _payments(
    key: Any, payer: str, payee: str, currency: str, settings: FloodSettings
) -> list[types.SignedInstruction]:
    run_id = new_run_id()
    signed_at = time.time_ns() // 1_000_000
    valid_until = signed_at + VALID_FOR_MS
    return [
        wire.envelope_to_proto(
            sign_as_party(
                Envelope.of(
                    Pay(
                        f"flood-{run_id}-{i}",
                        payer,
                        valid_until,
                        payee,
                        currency,
                        1,
                        "",
                        signed_at=signed_at,
                    )
                ),
                payer,
                key,
            )
        )
        for i in range(settings.calls)
    ]


async def _send_all(
    address: str, requests: list[types.SignedInstruction], deadline_s: float
) -> list[tuple[str, float]]:
    """Every request at once; per request its status code name and latency (seconds)."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [cb_grpc.CentralBankStub(channel) for channel in channels]

    async def one(i: int, request: types.SignedInstruction) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await stubs[i % CHANNELS].Pay(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            return error.code().name, time.monotonic() - started
        return "OK", time.monotonic() - started

    try:
        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    finally:
        for channel in channels:
            await channel.close()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel, contextlib.suppress(grpc.RpcError):
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10.0
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    return False


def _log_counts(db: Path, sender: str) -> Counter[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0) as connection:
        rows = connection.execute(
            "SELECT instruction_id FROM entries WHERE sender = ?", (sender,)
        ).fetchall()
    connection.close()
    return Counter(instruction_id for (instruction_id,) in rows)


def _figures(
    settings: FloodSettings,
    requests: list[types.SignedInstruction],
    outcomes: list[tuple[str, float]],
    counts: Counter[str],
    wall: float,
    serving: bool,
) -> dict[str, Any]:
    ids = [r.instruction.instruction_id for r in requests]
    latencies: dict[str, list[float]] = {}
    for code, seconds in outcomes:
        latencies.setdefault(code, []).append(seconds)
    timed_out = [
        i for i, (code, _) in zip(ids, outcomes, strict=True) if code == "DEADLINE_EXCEEDED"
    ]
    return {
        "calls": settings.calls,
        "deadline_s": settings.deadline_s,
        "max_in_flight": settings.max_in_flight,
        "wall_s": round(wall, 2),
        "codes": dict(Counter(code for code, _ in outcomes)),
        "latency_ms": {
            code: {"p50": _percentile(values, 0.5), "p99": _percentile(values, 0.99)}
            for code, values in sorted(latencies.items())
        },
        "settled": sum(1 for i in ids if counts[i]),
        "settled_twice": sum(1 for i in ids if counts[i] > 1),
        "timed_out_but_settled": sum(1 for i in timed_out if counts[i]),
        "serving_after": serving,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def describe(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['calls']} concurrent payments on one node "
        f"(deadline {figures['deadline_s']} s, at most {figures['max_in_flight']} in flight), "
        f"answered in {figures['wall_s']} s:",
    ]
    for code, count in sorted(figures["codes"].items()):
        latency = figures["latency_ms"][code]
        lines.append(
            f"  {code:<20} {count:>7}   p50 {latency['p50']:>8} ms   p99 {latency['p99']:>8} ms"
        )
    lines.append(
        f"settled {figures['settled']} (twice: {figures['settled_twice']}); "
        f"timed out but settled: {figures['timed_out_but_settled']}; "
        f"node SERVING afterwards: {figures['serving_after']}"
    )
    return "\n".join(lines)
