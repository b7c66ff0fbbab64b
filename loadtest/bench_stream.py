"""`cbdc-bridge bench stream`: dual-signed PvPs through the streaming path vs a bidi echo.

One run, one machine:

1. a fresh network is started and funded; `pvps` cross-border dual-signed PvPs are signed by
   both banks beforehand (in worker processes, outside the measurement), spread over every
   central bank node as the proposer's node;
2. **stream**: one asyncio client process opens one `CentralBank.SubmitStream` per central
   bank node and keeps `window` PvPs in flight on each, `batch` PvPs per message (answered
   by one message with a result per PvP; `batch` 1: one PvP per message, the older shape).
   Every PvP goes bank -> its central bank node (verifies the bank's signature, endorses its
   leg, gets the counterparty central bank's endorsement from that node) -> the bridge
   (verifies both endorsements, settles, commits the block) and back. `stream_pvp_per_s` =
   PvPs settled / time from the first send to the last answer;
3. **echo**: the same client shape (as many bidi streams, the same `window` payloads in
   flight in messages of `batch` payloads, each payload a signed PvP's size) against a trivial
   bidirectional-stream echo: `stream_echo_msg_per_s` messages and `stream_echo_pvp_per_s`
   payloads echoed per second.

`ratio = stream_pvp_per_s / stream_echo_pvp_per_s`: the settled rate against what gRPC alone
carries in the same shape. Afterwards the ledger must hold exactly
the PvPs the client saw settle, and the log must verify.

With `prefill` N > 0 the same client first measures `pvps` PvPs on the fresh log
(`empty_log_pvp_per_s`), then streams N more untimed (the log and every replica grow by N
entries), then measures another `pvps` (`prefilled_pvp_per_s`): `prefill_ratio` = prefilled /
empty, both taken in the same run on the same network (goal >= 0.9). The stage budget and
server CPU are those of the last measured part.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import central_bank_pb2 as pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import DualPvp, Envelope
from bridge.errors import Reason
from bridge.signing import sign_as_party
from loadtest.benchkit import (
    CpuMeter,
    Profiler,
    StageMeter,
    bench_network,
    crypto_floor,
    describe_budget,
    describe_core_per_node,
    echo_server,
    metrics_ports,
    node_pids,
)
from loadtest.corridor import LoadNetwork, rate, trade_amounts, trade_reference
from loadtest.crosscheck import crosscheck
from loadtest.echo import measure_stream_echo
from loadtest.settings import new_run_id

__all__ = ["StreamSettings", "describe", "run"]

SUBMIT_STREAM = "/bridge.v1.CentralBank/SubmitStream"
SETTLED = types.OUTCOME_SETTLED
BANK_SIGNATURES_PER_PVP = 2  # a dual-signed PvP: both banks sign it
VALID_FOR_MS = 30 * 60_000
PREFILL_MS_PER_PVP = 10  # each pre-signed PvP stays valid this much longer per prefilled PvP
DEFAULT_BATCH = 64  # PvPs per SubmitStream message (measured: docs/performance.md)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    pvps: int = 20_000
    window: int = 512
    batch: int = DEFAULT_BATCH  # PvPs per SubmitStream message (1: one message per PvP)
    echo_seconds: float = 10.0
    replica_check: str = "none"
    central_banks: int = 4
    banks_per_central_bank: int = 2
    signers: int = 2  # processes that pre-sign the PvPs
    prefill: int = 0  # PvPs streamed untimed between a measurement on the fresh log and the last
    profile: Path | None = None
    network: Path | None = None


# ---------------------------------------------------------------------------- pre-signing


def _sign_share(args: tuple[str, str, int, int, int, int]) -> list[tuple[str, bytes]]:
    """Sign PvPs `first`..`first+count-1` (in a worker process): (node address, serialized
    SignedInstruction)."""
    directory, run_id, first, count, seed, valid_for_ms = args
    network = LoadNetwork.load(Path(directory))
    desks = network.desks
    rng = random.Random(seed)
    valid_until = time.time_ns() // 1_000_000 + valid_for_ms
    out = []
    for number in range(first, first + count):
        proposer = desks[number % len(desks)]
        counterparty = rng.choice(network.foreign(proposer))
        pay_amount, receive_amount = trade_amounts(rng, proposer, counterparty)
        body = DualPvp(
            f"{run_id}.s{number}", proposer.bank, valid_until, counterparty.bank,
            proposer.currency, pay_amount, counterparty.currency, receive_amount,
            rate(proposer, pay_amount, counterparty, receive_amount), trade_reference(rng),
            signed_at=time.time_ns() // 1_000_000,
        )  # fmt: skip
        envelope = sign_as_party(Envelope.of(body), proposer.bank, proposer.key)
        envelope = sign_as_party(envelope, counterparty.bank, counterparty.key)
        out.append((proposer.address, wire.envelope_to_proto(envelope).SerializeToString()))
    return out


def presign(
    directory: Path, run_id: str, pvps: int, processes: int, valid_for_ms: int = VALID_FOR_MS
) -> dict[str, list[bytes]]:
    """Serialized signed instructions per central bank node address."""
    shares = max(1, processes) * 4
    size = -(-pvps // shares)
    jobs = [
        (str(directory), run_id, first, min(size, pvps - first), first, valid_for_ms)
        for first in range(0, pvps, size)
    ]
    by_node: dict[str, list[bytes]] = {}
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        for signed in pool.map(_sign_share, jobs):
            for address, data in signed:
                by_node.setdefault(address, []).append(data)
    return by_node


# ---------------------------------------------------------------------------- streaming


@dataclass
class StreamTally:
    settled: int = 0
    refused: int = 0  # final refusals: nothing changed
    not_decided: int = 0  # retryable answers (unavailable, outcome unknown, shed): not settled
    failed: int = 0
    reasons: dict[str, int] | None = None

    def add_response(self, response: pb.BankSubmitResponse, count: int) -> None:
        """A response to a request of `count` instructions (a batch's results, or a whole
        request refused)."""
        if response.results:
            for result in response.results:
                self.add(result)
        else:
            for _ in range(count):
                self.add(response)

    def add(self, response: pb.BankSubmitResponse | pb.BankSubmitResult) -> None:
        if response.WhichOneof("result") == "status":
            if response.status.receipt.outcome == SETTLED and not response.status.receipt.duplicate:
                self.settled += 1
            else:
                self.failed += 1
            return
        reason = response.refusal.reason
        if reason in Reason.__members__ and Reason(reason).retryable:
            self.not_decided += 1
        else:
            self.refused += 1
        self.reasons = self.reasons or {}
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def frames(instructions: Sequence[bytes], batch: int) -> list[tuple[bytes, int]]:
    """Serialized SubmitStream requests carrying `batch` instructions each (1: `instruction`,
    the one-per-message shape), with how many each carries."""
    out = []
    for number, first in enumerate(range(0, len(instructions), batch), start=1):
        items = instructions[first : first + batch]
        request = pb.BankSubmitRequest(correlation_id=number)
        if batch == 1:
            request.instruction.ParseFromString(items[0])
        else:
            for item in items:
                request.instructions.add().ParseFromString(item)
        out.append((request.SerializeToString(), len(items)))
    return out


async def _drive(
    address: str, requests: Sequence[tuple[bytes, int]], window: int, tally: StreamTally
) -> None:
    """Send `requests` over one SubmitStream, at most `window` instructions in flight."""
    sizes = {number: count for number, (_, count) in enumerate(requests, start=1)}
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.stream_stream(
            SUBMIT_STREAM,
            request_serializer=None,  # already serialized
            response_deserializer=pb.BankSubmitResponse.FromString,
        )
        largest = max(sizes.values(), default=1)
        credit = asyncio.Semaphore(max(1, window // largest))  # messages in flight

        async def outgoing() -> AsyncIterator[bytes]:
            for data, _ in requests:
                await credit.acquire()
                yield data

        received = answered = 0
        try:
            async for response in method(outgoing()):
                count = sizes.get(response.correlation_id, 1)
                tally.add_response(response, count)
                received += 1
                answered += count
                credit.release()
                if received == len(requests):
                    break
        except grpc.aio.AioRpcError:
            tally.failed += sum(sizes.values()) - answered


async def stream_pvps(
    by_node: dict[str, list[bytes]], window: int, batch: int = 1
) -> tuple[StreamTally, float]:
    """Send every pre-signed PvP over one SubmitStream per node, `batch` per message;
    (tally, seconds)."""
    tally = StreamTally()
    framed = {address: frames(requests, batch) for address, requests in by_node.items()}
    started = time.perf_counter()
    await asyncio.gather(
        *(_drive(address, requests, window, tally) for address, requests in framed.items())
    )
    return tally, time.perf_counter() - started


# ---------------------------------------------------------------------------- the benchmark


def run(settings: StreamSettings) -> dict[str, Any]:
    run_id = new_run_id()
    with (
        bench_network(
            settings.network,
            central_banks=settings.central_banks,
            banks_per_central_bank=settings.banks_per_central_bank,
            replica_check=settings.replica_check,
        ) as network,
        echo_server() as echo,
    ):
        total = settings.pvps * (2 if settings.prefill else 1) + settings.prefill
        valid_for = VALID_FOR_MS + PREFILL_MS_PER_PVP * settings.prefill
        by_node = presign(network.directory, run_id, total, settings.signers, valid_for)
        streams = len(by_node)
        echo_figures = asyncio.run(
            measure_stream_echo(
                echo.address, duration=settings.echo_seconds, streams=streams,
                window=settings.window, batch=settings.batch,
            )
        )  # fmt: skip
        pids = node_pids(network)
        guess = max(5.0, settings.pvps / 2000)
        empty: tuple[StreamTally, float] | None = None
        filled = StreamTally()
        if settings.prefill:
            first, fill, last = _parts(by_node, settings.pvps, settings.prefill, total)
            empty = asyncio.run(stream_pvps(first, settings.window, settings.batch))
            filled = asyncio.run(stream_pvps(fill, settings.window, settings.batch))[0]
            by_node = last
        with (
            StageMeter(metrics_ports(network)) as stages,
            CpuMeter(pids) as cpu,
            Profiler(settings.profile, pids, guess),
        ):
            tally, seconds = asyncio.run(stream_pvps(by_node, settings.window, settings.batch))
        earlier = [t for t in (empty[0] if empty else None, filled) if t is not None]
        settled_in_all = tally.settled + sum(t.settled for t in earlier)
        check = crosscheck(network.directory, run_id, settled_in_all)
    pvp_rate = tally.settled / seconds if seconds > 0 else 0.0
    floor = crypto_floor(pvp_rate, BANK_SIGNATURES_PER_PVP)
    echo_rate = echo_figures.payloads_per_second
    ratio = pvp_rate / echo_rate if echo_rate else 0.0
    prefill_figures = _prefill_figures(settings.prefill, empty, filled, pvp_rate)
    clean = all(t.failed == 0 and t.refused == 0 and t.not_decided == 0 for t in [*earlier, tally])
    return {
        "stream_pvp_per_s": round(pvp_rate, 1),
        "stream_echo_msg_per_s": round(echo_figures.per_second, 1),
        "stream_echo_pvp_per_s": round(echo_rate, 1),
        "ratio": round(ratio, 3),
        "pvps_sent": settings.pvps,
        "pvps_settled": tally.settled,
        "refused": tally.refused,
        "not_decided": tally.not_decided,
        "refusal_reasons": tally.reasons or {},
        "failed": tally.failed,
        "seconds": round(seconds, 2),
        "server_cpu_ms_per_pvp": round(1000 * cpu.total / tally.settled, 3)
        if tally.settled
        else None,
        "server_cpu_s": {name: round(s, 2) for name, s in sorted(cpu.seconds.items())},
        **stages.figures(cpu, tally.settled),
        **floor,
        **prefill_figures,
        "goals_met": {
            "stream_pvp_per_s_ge_5000": pvp_rate >= 5000,
            "ratio_ge_0_5": ratio >= 0.5,
            "server_cpu_le_0_4_ms": 0 < cpu.total <= 0.0004 * tally.settled,
            "floor_ratio_ge_0_4": floor["floor_ratio"] >= 0.4,
            **(
                {"prefill_ratio_ge_0_9": prefill_figures["prefill_ratio"] >= 0.9}
                if settings.prefill
                else {}
            ),
        },
        "settings": {
            "streams": streams,
            "window": settings.window,
            "batch": settings.batch,
            "echo_seconds": settings.echo_seconds,
            "replica_check": settings.replica_check,
            "central_banks": settings.central_banks,
            "banks_per_central_bank": settings.banks_per_central_bank,
            "prefill": settings.prefill,
            "client_processes": 1,
            "cpus": os.cpu_count(),
        },
        "crosscheck": check.to_json(),
        "ok": check.ok and clean,
    }


Requests = dict[str, list[bytes]]


def _parts(by_node: Requests, pvps: int, prefill: int, total: int) -> tuple[Requests, ...]:
    """The requests dealt round-robin over the nodes into three parts of exactly `pvps`,
    `prefill` and the rest: measured on the fresh log, prefill, measured on the prefilled log."""
    queues = [[(address, r) for r in requests] for address, requests in by_node.items()]
    dealt = [item for row in itertools.zip_longest(*queues) for item in row if item is not None]
    parts: tuple[Requests, ...] = ({}, {}, {})
    for number, (address, request) in enumerate(dealt[:total]):
        part = parts[0] if number < pvps else parts[1] if number < pvps + prefill else parts[2]
        part.setdefault(address, []).append(request)
    return parts


def _prefill_figures(
    prefill: int, empty: tuple[StreamTally, float] | None, filled: StreamTally, rate: float
) -> dict[str, Any]:
    if not prefill or empty is None:
        return {}
    tally, seconds = empty
    empty_rate = tally.settled / seconds if seconds > 0 else 0.0
    return {
        "prefill": prefill,
        "prefill_settled": filled.settled,
        "empty_log_pvp_per_s": round(empty_rate, 1),
        "prefilled_pvp_per_s": round(rate, 1),
        "prefill_ratio": round(rate / empty_rate, 3) if empty_rate else 0.0,
    }


def describe(figures: dict[str, Any]) -> str:
    goals = figures["goals_met"]
    return "\n".join(
        [
            f"streamed dual-signed PvPs: {figures['stream_pvp_per_s']:.0f} /s "
            f"({figures['pvps_settled']} settled in {figures['seconds']} s; goal >= 5000: "
            f"{'met' if goals['stream_pvp_per_s_ge_5000'] else 'missed'})",
            f"bidi echo:                 {figures['stream_echo_pvp_per_s']:.0f} PvP-sized "
            f"payloads/s ({figures['stream_echo_msg_per_s']:.0f} msg/s)",
            f"ratio:                     {figures['ratio']:.3f} "
            f"(goal >= 0.5: {'met' if goals['ratio_ge_0_5'] else 'missed'})",
            f"crypto floor:              {figures['crypto_floor_pvp_per_s']:.0f} PvP/s "
            f"(floor_ratio {figures['floor_ratio']:.3f}; goal >= 0.4: "
            f"{'met' if goals['floor_ratio_ge_0_4'] else 'missed'})",
            f"server CPU per PvP:        {figures['server_cpu_ms_per_pvp']} ms "
            f"(goal <= 0.4: {'met' if goals['server_cpu_le_0_4_ms'] else 'missed'}), by node "
            "and stage (ms):",
            *describe_budget(figures["cpu_ms_per_pvp_by_stage"]),
            f"with a core per node:      {describe_core_per_node(figures)}",
            f"entries per block:         {figures['entries_per_block']}",
            *_describe_prefill(figures),
            f"cross-check:               {'OK' if figures['crosscheck']['ok'] else 'PROBLEM'}",
        ]
    )


def _describe_prefill(figures: dict[str, Any]) -> list[str]:
    if "prefill_ratio" not in figures:
        return []
    met = figures["goals_met"]["prefill_ratio_ge_0_9"]
    return [
        f"after {figures['prefill']:,} more PvPs:  {figures['prefilled_pvp_per_s']:.0f} /s, "
        f"on the fresh log {figures['empty_log_pvp_per_s']:.0f} /s: prefill_ratio "
        f"{figures['prefill_ratio']:.3f} (goal >= 0.9: {'met' if met else 'missed'})"
    ]
