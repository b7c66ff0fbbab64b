"""A bounded load client with a durable record of every instruction it got an answer to.

Run as `python -m participants.chaos.load NETWORK RECORD --seed N --rate R` (the campaign
starts it as a process of its own, so that it can be SIGKILLed like any other). A few worker
threads send, at about `rate` instructions per second in all, a seeded mix of what banks do:
payments, dual-signed PvPs (endorsed by both central bank nodes) and proposed PvPs, most
accepted by the counterparty through its own node and some left to expire.

Each instruction is signed once; its exact request bytes are resent, unchanged, while the
answer is "not decided" (a retryable status or a transport failure), until it is decided or
its own deadline passes. Every decided answer is appended to RECORD as one JSON line, flushed
before the next instruction (a line written survives the client's SIGKILL):

    {"t": 12.3, "ack": true, "rpc": "Pay", "node": "PBOC", "sender": "ICBC", "id": "...",
     "seq": 42, "outcome": "SETTLED", "request": "<base64 SignedInstruction>"}

`ack` false lines carry the refusal's `reason` (`undecided` when no answer came in time);
`retry` lines say that an attempt was not decided (its `reason`) and is being resent.
Calls never wait longer than `--call-timeout`; the longest call seen is in the summary line.

The client pauses while the file `RECORD.pause` exists (and says so by creating
`RECORD.idle` once nothing is in flight), and stops on SIGTERM, printing a JSON summary.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bridge import wire
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import AcceptPvp, DualPvp, Envelope, Instruction, Pay, ProposePvp
from bridge.signing import sign_as_party
from participants.network_config import NetworkConfig
from participants.sdk import BridgeRpcError

SERVICE = "/bridge.v1.CentralBank/"
VALID_FOR_MS = 900_000  # long enough to resubmit every instruction at the end of a campaign
EXPIRES_WITHIN_MS = 2_500  # a proposal left unanswered expires this soon
OUTCOMES = {
    value: name.removeprefix("OUTCOME_") for name, value in types.Outcome.items()
}  # proto enum number -> SETTLED, HELD, ...


@dataclass
class Sent:
    """One instruction as sent: which node, which RPC, the exact request bytes."""

    node: str
    rpc: str
    body: Instruction
    request: bytes


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[str] = field(default_factory=Counter)
    longest_call: float = 0.0
    in_flight: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LoadClient:
    def __init__(self, config: NetworkConfig, record: Path, seed: int, args: Any) -> None:
        self.config = config
        self.record_path = record
        self.record = record.open("a", encoding="utf-8")
        self.rng = random.Random(seed)
        self.seed = seed
        self.args = args
        self.stop = threading.Event()
        self.stats = Stats()
        self.write_lock = threading.Lock()
        self.keys = {
            bank.id: config.load_key(bank.id) for cb in config.central_banks for bank in cb.banks
        }
        self.home = {bank.id: cb for cb in config.central_banks for bank in cb.banks}
        via = dict(item.split("=", 1) for item in args.via)
        self.channels = {
            cb.id: grpc.insecure_channel(
                via.get(cb.id, cb.address),
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            for cb in config.central_banks
        }
        self.started = time.monotonic()
        self.counter = 0
        self.counter_lock = threading.Lock()
        self.last_call = threading.local()  # .took: seconds of this thread's last call

    # ------------------------------------------------------------------ instructions

    def next_id(self, kind: str) -> str:
        with self.counter_lock:
            self.counter += 1
            return f"chaos-{self.seed}-{os.getpid()}-{kind}-{self.counter}"

    def signed(self, body: Instruction, *signers: str) -> bytes:
        envelope = Envelope.of(body)
        for party in signers or (body.sender,):
            envelope = sign_as_party(envelope, party, self.keys[party])
        message: bytes = wire.envelope_to_proto(envelope).SerializeToString()
        return message

    def pair(self, rng: random.Random, *, cross: bool) -> tuple[str, str]:
        banks = sorted(self.keys)
        while True:
            a, b = rng.sample(banks, 2)
            if (self.home[a].currency != self.home[b].currency) == cross:
                return a, b

    def instruction(self, rng: random.Random) -> list[Sent]:
        """The next instruction (a proposal comes with the acceptance to send after it)."""
        roll = rng.random()
        signed_at = now_ms()
        valid_until = signed_at + VALID_FOR_MS
        if roll < 0.5:
            payer, payee = self.pair(rng, cross=rng.random() < 0.5)
            body: Instruction = Pay(
                self.next_id("pay"),
                payer,
                valid_until,
                payee,
                self.home[payer].currency,
                rng.randrange(1, 10_000),
                "INV-CQ-chaos",
                signed_at=signed_at,
            )
            return [Sent(self.home[payer].id, "Pay", body, self.signed(body))]
        a, b = self.pair(rng, cross=True)
        units = rng.randrange(1, 1_000)
        pay = (self.home[a].currency, 100 * units)
        receive = (self.home[b].currency, 108 * units)
        if roll < 0.75:
            dual = DualPvp(
                self.next_id("dual"),
                a,
                valid_until,
                b,
                *pay,
                *receive,
                "1.08",
                "FX chaos",
                signed_at=signed_at,
            )
            return [Sent(self.home[a].id, "SubmitDualPvp", dual, self.signed(dual, a, b))]
        expires = roll > 0.95
        settle_by = now_ms() + (EXPIRES_WITHIN_MS if expires else VALID_FOR_MS)
        proposal = ProposePvp(
            self.next_id("pvp"),
            a,
            valid_until,
            b,
            *pay,
            *receive,
            "1.08",
            settle_by,
            "FX chaos",
            signed_at=signed_at,
        )
        out = [Sent(self.home[a].id, "ProposePvp", proposal, self.signed(proposal))]
        if not expires:
            accept = AcceptPvp(
                self.next_id("acc"),
                b,
                valid_until,
                a,
                proposal.instruction_id,
                proposal.terms_hash(),
                signed_at=signed_at,
            )
            out.append(Sent(self.home[b].id, "AcceptPvp", accept, self.signed(accept)))
        return out

    # ------------------------------------------------------------------ sending

    def call(self, sent: Sent, timeout: float) -> bytes:
        method = self.channels[sent.node].unary_unary(
            SERVICE + sent.rpc, request_serializer=None, response_deserializer=None
        )
        began = time.monotonic()
        try:
            answer: bytes = method(sent.request, timeout=timeout)
            return answer
        finally:
            took = self.last_call.took = time.monotonic() - began
            with self.stats.lock:
                self.stats.longest_call = max(self.stats.longest_call, took)

    def send(self, sent: Sent) -> bool:
        """Send until decided; record the answer. True when it was acknowledged."""
        deadline = time.monotonic() + self.args.instruction_deadline
        pause = 0.1
        while True:
            try:
                answer = self.call(sent, self.args.call_timeout)
            except grpc.RpcError as error:
                failure = BridgeRpcError.from_rpc_error(error)
                self.count(f"{failure.code.name}:{failure.reason.value}")
                if not failure.retryable:
                    self.write(sent, ack=False, reason=failure.reason.value)
                    return False
                self.write(sent, retry=True, reason=failure.reason.value)
                if time.monotonic() + pause > deadline:
                    self.write(sent, ack=False, reason="undecided")
                    return False
                time.sleep(random.uniform(pause / 2, pause))
                pause = min(pause * 2, 1.0)
                continue
            status = types.InstructionStatus.FromString(answer)
            self.count("OK")
            self.write(
                sent,
                ack=True,
                seq=status.receipt.seq,
                outcome=OUTCOMES.get(status.receipt.outcome, str(status.receipt.outcome)),
                duplicate=status.receipt.duplicate,
            )
            return True

    def count(self, what: str) -> None:
        with self.stats.lock:
            self.stats.answers[what] += 1

    def write(self, sent: Sent, **fields: Any) -> None:
        line = {
            "t": round(time.time(), 3),
            "rpc": sent.rpc,
            "node": sent.node,
            "sender": sent.body.sender,
            "id": sent.body.instruction_id,
            "took": round(getattr(self.last_call, "took", 0.0), 3),
            **fields,
            "request": base64.b64encode(sent.request).decode("ascii"),
        }
        with self.write_lock:
            self.record.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.record.flush()

    # ------------------------------------------------------------------ workers

    def paused(self) -> bool:
        return Path(str(self.record_path) + ".pause").exists()

    def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{os.getpid()}-{index}")
        interval = self.args.workers / self.args.rate
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not self.stop.is_set():
            if self.paused():
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            with self.stats.lock:
                self.stats.in_flight += 1
            try:
                for sent in self.instruction(rng):
                    if not self.send(sent):
                        break
            finally:
                with self.stats.lock:
                    self.stats.in_flight -= 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()

    def watch_idle(self) -> None:
        idle = Path(str(self.record_path) + ".idle")
        while not self.stop.is_set():
            with self.stats.lock:
                quiet = self.stats.in_flight == 0
            if self.paused() and quiet:
                idle.touch()
            elif idle.exists() and not self.paused():
                idle.unlink(missing_ok=True)
            time.sleep(0.05)

    def run(self) -> dict[str, Any]:
        threads = [
            threading.Thread(target=self.worker, args=(i,), daemon=True)
            for i in range(self.args.workers)
        ]
        threads.append(threading.Thread(target=self.watch_idle, daemon=True))
        for thread in threads:
            thread.start()
        end = time.monotonic() + self.args.duration if self.args.duration > 0 else None
        while not self.stop.is_set():
            if end is not None and time.monotonic() >= end:
                self.stop.set()
            self.stop.wait(0.2)
        for thread in threads:
            thread.join(self.args.call_timeout * 2)
        self.record.close()
        return {
            "event": "load-summary",
            "answers": dict(self.stats.answers),
            "longest_call_s": round(self.stats.longest_call, 3),
            "seconds": round(time.monotonic() - self.started, 1),
        }


def parse(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(prog="python -m participants.chaos.load")
    parser.add_argument("network", type=Path)
    parser.add_argument("record", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20.0, help="instructions per second")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0: until SIGTERM")
    parser.add_argument("--call-timeout", type=float, default=5.0)
    parser.add_argument("--instruction-deadline", type=float, default=60.0)
    parser.add_argument(
        "--via", action="append", default=[], help="CB=HOST:PORT: reach CB's node there"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    client = LoadClient(NetworkConfig.load(args.network), args.record, args.seed, args)
    signal.signal(signal.SIGTERM, lambda *_: client.stop.set())
    print(json.dumps({"event": "load-started", "pid": os.getpid()}), flush=True)
    print(json.dumps(client.run()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
