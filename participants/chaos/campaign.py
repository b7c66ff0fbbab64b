"""A seeded fault campaign against a live network on loopback, and the figures it prints.

The campaign starts a bridge node (its store on a small tmpfs when it may mount one) and four
central bank nodes as processes, funds every bank, and keeps a load client running (a process
of its own, see `participants.chaos.load`). One central bank node reaches the bridge through a
fault proxy, and the load client reaches that node through another. It then runs the scenarios
of `schedule.plan(seed, profile)` one after the other; after each fault it measures how long
until a payment settles again through every central bank node (recovery), and after each
scenario it pauses the load and runs every check of `participants.chaos.checks`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import types_pb2 as types
from bridge.domain import Pay, ProposePvp
from bridge.node import fault_hooks
from loadtest.pgserver import binaries
from participants.broker import Broker, mosquitto_binary
from participants.chaos.checks import (
    Checker,
    CheckReport,
    longest_call,
    read_acks,
    read_answers,
)
from participants.chaos.events import EventWatch
from participants.chaos.faults import ClockOffset, FaultProxy, ManagedProcess, SmallDisk, rss_bytes
from participants.chaos.load import LoadClient, Sent, now_ms, parse
from participants.chaos.schedule import (
    PROFILES,
    Fault,
    Profile,
    Scenario,
    plan,
    schedule_digest,
)
from participants.launcher import exit_on_sigterm, free_ports, sigterm_held, wait_serving
from participants.network_config import generate_network
from participants.sdk import CentralBankAdminClient

RECOVERY_TIMEOUT = 60.0
FUNDS = 10**13
MEMORY_FACTOR = 1.5
CALL_TIMEOUT = 5.0  # the load client's deadline per call
DISK_FULL_CAP = 20.0  # longest a disk stays full waiting for a commit to fail
MEMORY_SLACK = 64 * 1024 * 1024
HANG_FACTOR = 2.0  # a call still unanswered at twice its deadline hangs
NODE = (sys.executable, "-m", "participants.node_cli")
LOAD = (sys.executable, "-m", "participants.chaos.load")


FEATURE_MODULES = {"mqtt": "bridge.node.publisher", "postgres": "bridge.store.postgres"}


def feature_present(feature: str) -> bool:
    """Whether this build has the component a scenario needs (its module exists)."""
    return importlib.util.find_spec(FEATURE_MODULES[feature]) is not None


@dataclass
class Figures:
    kills: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unrecovered: list[str] = field(default_factory=list)


class Campaign:
    """The SQLite part: one bridge process on a store under a small tmpfs, fault proxies."""

    name = "sqlite"

    def __init__(
        self,
        seed: int,
        profile: Profile,
        directory: Path,
        figures: Figures | None = None,
        *,
        small_disk: bool = True,
    ) -> None:
        self.small_disk = small_disk
        self.seed = seed
        self.profile = profile
        self.directory = directory
        self.python = sys.executable
        self.figures = figures or Figures()
        self.loads = 0
        self.memory_base: dict[str, int] = {}
        self.proxies: list[FaultProxy] = []
        self.spawned: list[ManagedProcess] = []  # every process made, stopped at teardown
        self.broker: Broker | None = None
        self.events: EventWatch | None = None
        self.disk: SmallDisk | None = None
        self.disk_problem: str | None = None

    # ------------------------------------------------------------------ the network

    def setup(self) -> None:
        d = self.directory
        ports = free_ports(12)
        self.config = generate_network(d / "net", ports=ports[:9])
        if mosquitto_binary() is not None:
            self.config = replace(self.config, mqtt_port=ports[11])
            self.config.save()
            self.broker = Broker(self.config.mqtt_directory, ports[11]).start()
        self.cb_ids = [cb.id for cb in self.config.central_banks]
        self.scenarios = plan(self.seed, self.profile, self.cb_ids)
        self.linked = self.cb_ids[-1]  # the node behind both proxies
        store = d / "store"
        store.mkdir(parents=True, exist_ok=True)
        if self.small_disk:
            self.disk = SmallDisk(store, 64 if self.profile.name == "quick" else 256)
            self.disk_problem = self.disk.mount()
        else:
            self.disk_problem = "the store is on the ordinary disk in this run"
        self.db = store / "bridge.sqlite"
        self.clock = ClockOffset(d / "clock-offset")
        self.crash_file = d / "bridge-crash"
        self.bridge_proxy = FaultProxy("bridge-link", ("127.0.0.1", ports[0]), ports[9]).start()
        self.proxies.append(self.bridge_proxy)
        node = self.config.central_bank(self.linked)
        self.bank_proxy = FaultProxy("bank-link", ("127.0.0.1", node.port), ports[10]).start()
        self.proxies.append(self.bank_proxy)
        via = d / "via" / self.linked
        via.mkdir(parents=True, exist_ok=True)
        (via / "keys").unlink(missing_ok=True)
        (via / "keys").symlink_to((d / "net" / "keys").resolve())
        replace(self.config, directory=via, bridge_port=self.bridge_proxy.port).save()
        logs = d / "logs"
        self.bridge = self.managed(
            "bridge",
            [*NODE, "bridge", "--network", str(d / "net"), "--db", str(self.db)],
            logs / "bridge.log",
            env={
                fault_hooks.CLOCK_OFFSET_FILE: str(self.clock.path),
                fault_hooks.CRASH_FILE: str(self.crash_file),
            },
        )
        self.nodes = {
            cb: self.managed(
                cb,
                [
                    *NODE,
                    "central-bank",
                    cb,
                    "--network",
                    str(via if cb == self.linked else d / "net"),
                ],
                logs / f"{cb}.log",
            )
            for cb in self.cb_ids
        }
        self.start_bridge()
        for node_process in self.nodes.values():
            node_process.start()
        for cb in self.config.central_banks:
            wait_serving(cb.address, time.monotonic() + 90)
        self.checker = Checker(self.config, str(self.db))
        self.fund()
        if self.broker is not None:
            self.events = EventWatch(self.config, d / "net").start()
        self.probe_client = LoadClient(
            self.config,
            d / "probes.jsonl",
            self.seed,
            parse([str(d / "net"), str(d / "probes.jsonl"), "--instruction-deadline", "90"]),
        )
        self.start_load()
        self.recover()  # every node settles before the first fault
        self.memorise_baseline()

    def managed(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """A process of the network (not started yet), remembered so that `teardown` stops it
        however far `setup` got."""
        process = ManagedProcess(name, argv, log, env or {})
        self.spawned.append(process)
        return process

    def memorise_baseline(self) -> None:
        """Every process's RSS once the load runs: what its memory must come back near."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while len(read_acks([self.load_record])) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        for role, pid in self.pids().items():
            self.memory_base[role] = rss_bytes(pid)

    def start_bridge(self) -> None:
        self.bridge.start()
        wait_serving(self.config.bridge_address, time.monotonic() + 90)

    def fund(self) -> None:
        for cb in self.config.central_banks:
            with CentralBankAdminClient.from_network(self.directory / "net", cb.id) as admin:
                for bank in cb.banks:
                    deadline = time.monotonic() + 90
                    while True:
                        try:
                            admin.issue(
                                bank.id, cb.currency, FUNDS, instruction_id=f"fund-{bank.id}"
                            )
                            break
                        except Exception:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.5)  # the node is still admitting its banks

    def start_load(self) -> None:
        self.loads += 1
        record = self.directory / f"load-{self.loads}.jsonl"
        self.load = self.managed(
            "load",
            [
                *LOAD,
                str(self.directory / "net"),
                str(record),
                *("--seed", str(self.seed * 1000 + self.loads)),
                *("--rate", str(self.profile.rate), "--workers", str(self.profile.workers)),
                *(("--via", f"{self.linked}={self.bank_proxy.address}") if self.proxies else ()),
                *("--call-timeout", str(CALL_TIMEOUT)),
            ],
            self.directory / "logs" / f"load-{self.loads}.log",
        )
        self.load_record = record
        self.load.start()

    def records(self) -> list[Path]:
        out = [self.directory / f"load-{i}.jsonl" for i in range(1, self.loads + 1)]
        return [*out, self.directory / "probes.jsonl"]

    def pids(self) -> dict[str, int | None]:
        """Every process of the running network by name (the latest of a name: a restarted
        load client replaces the one killed), the MQTT broker, and the campaign itself."""
        out: dict[str, int | None] = {process.name: process.pid for process in self.spawned}
        if self.broker is not None and self.broker.process is not None:
            out["mqtt-broker"] = self.broker.process.pid
        out["campaign"] = os.getpid()
        return out

    def teardown(self) -> None:
        """Stop whatever `setup` and the faults started (the last made first: load clients,
        then central bank nodes, then the bridge), even when `setup` did not finish."""
        with sigterm_held():
            for process in reversed(self.spawned):
                process.stop()
            checker: Checker | None = getattr(self, "checker", None)
            if checker is not None:
                checker.close()
            for proxy in self.proxies:
                proxy.close()
            if self.disk is not None:
                self.disk.free()
                self.disk.unmount()
            if self.broker is not None:
                self.broker.stop()

    # ------------------------------------------------------------------ probes and checks

    def probe(self, cb: str, proposal_to: str | None = None) -> Sent:
        """A payment (or a short-lived proposal) from a bank of `cb`, through `cb`'s node."""
        node = self.config.central_bank(cb)
        payer, payee = node.banks[0].id, node.banks[-1].id
        client = self.probe_client
        if proposal_to is not None:
            other = self.config.central_bank(proposal_to)
            body: Any = ProposePvp(
                client.next_id("probe-pvp"),
                payer,
                now_ms() + 900_000,
                other.banks[0].id,
                node.currency,
                100,
                other.currency,
                108,
                "1.08",
                now_ms() + int(self.profile.settle_within_s * 1000),
                "outage probe",
                signed_at=now_ms(),
            )
            return Sent(cb, "ProposePvp", body, client.signed(body))
        body = Pay(
            client.next_id("probe"),
            payer,
            now_ms() + 900_000,
            payee,
            node.currency,
            1,
            signed_at=now_ms(),
        )
        return Sent(cb, "Pay", body, client.signed(body))

    def recover(self, healed_at: float | None = None) -> float:
        """Seconds from `healed_at` until a payment settles through every central bank node."""
        start = time.monotonic() if healed_at is None else healed_at
        for cb in self.cb_ids:
            if not self.probe_client.send(self.probe(cb)):
                raise RuntimeError(f"no payment settled through {cb} within the deadline")
        return round(time.monotonic() - start, 3)

    def check(self, name: str, *, final: bool = False) -> CheckReport:
        pause = Path(str(self.load_record) + ".pause")
        idle = Path(str(self.load_record) + ".idle")
        pause.touch()
        deadline = time.monotonic() + 120
        while not idle.exists() and self.load.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        report = CheckReport()
        try:
            acks = read_acks(self.records())
            self.checker.logged_exactly_once(acks, report)
            self.checker.resubmit(acks, report)
            self.checker.conservation(report)
            time.sleep(self.profile.settle_within_s)  # let due expiries happen
            self.checker.holds_and_expiries(acks, report, grace_ms=2_000)
            self.checker.replicas(report, timeout=30)
            if final or self.profile.name == "full":
                self.checker.log_verify(report)
            self.memory(report)
        finally:
            pause.unlink(missing_ok=True)
        return report

    def memory(self, report: CheckReport) -> None:
        """Every process of the network (and the load client) within its memory bound; the
        campaign itself, which holds the records it checks, is reported but not bounded."""
        for role, pid in self.pids().items():
            if role == "campaign":
                continue
            base = self.memory_base.get(role, 0)
            rss = rss_bytes(pid)
            if base and rss > base * MEMORY_FACTOR + MEMORY_SLACK:
                report.memory_over_bound.append(f"{role}: {rss >> 20} MiB (base {base >> 20})")

    # ------------------------------------------------------------------ faults

    def fault_done(self, fault: Fault, healed_at: float, **extra: Any) -> None:
        try:
            seconds: float | None = self.recover(healed_at)
        except RuntimeError as error:
            seconds = None
            self.figures.unrecovered.append(f"{fault.kind} {fault.target}: {error}")
        if seconds is not None:
            self.figures.recoveries.append(seconds)
        entry = {**asdict(fault), "recovery_s": seconds, **extra}
        # empty fields left out; a False flag (finality stopped...) is kept: `False == 0`
        entry = {k: v for k, v in entry.items() if v is False or v not in ("", 0, 0.0)}
        self.figures.faults.append(entry)
        if fault.kind == "kill":
            self.figures.kills.append(entry)
        print(json.dumps({"fault": entry}), file=sys.stderr, flush=True)

    def kill(self, fault: Fault) -> None:
        """SIGKILL one process at a random moment under load (the bridge: or at a phase of a
        block's commit, by its own hook), restart it, and time the recovery."""
        if fault.target == "bridge":
            time.sleep(fault.after)
            phase = fault.phase
            if phase == "random":
                self.bridge.kill()
            else:
                self.crash_file.write_text(f"{phase} {fault.blocks}\n", encoding="ascii")
                assert self.bridge.process is not None
                try:
                    self.bridge.process.wait(60)  # kills itself at `phase` of a coming block
                except subprocess.TimeoutExpired:
                    self.crash_file.unlink(missing_ok=True)
                    self.bridge.kill()
                    phase = f"{phase} (hook did not fire; killed from outside)"
            healed = time.monotonic()
            self.start_bridge()
            self.fault_done(replace(fault, phase=phase), healed)
            return
        if fault.target == "load":
            deadline = time.monotonic() + 30
            while len(read_acks([self.load_record])) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)  # it is sending: kill it mid-stream, not while it starts
        time.sleep(fault.after)
        if fault.target == "load":
            self.load.kill()
            healed = time.monotonic()
            self.start_load()
            deadline = healed + RECOVERY_TIMEOUT
            while not read_acks([self.load_record]) and time.monotonic() < deadline:
                time.sleep(0.05)  # recovered: the new client's first acknowledgement
            self.fault_done(fault, healed)
            return
        node = self.nodes[fault.target]
        node.kill()
        healed = time.monotonic()
        node.start()
        wait_serving(self.config.central_bank(fault.target).address, time.monotonic() + 90)
        self.fault_done(fault, healed)

    def broker_outage(self, fault: Fault) -> None:
        """The MQTT broker down: settlement goes on, events wait in the outbox, and every one
        reaches its bank once the broker is back."""
        assert self.broker is not None
        time.sleep(fault.after)
        self.broker.stop()
        time.sleep(fault.hold)
        self.broker.start()
        self.fault_done(fault, time.monotonic())

    def publisher_kill(self, fault: Fault) -> None:
        """SIGKILL the publisher (it runs in the bridge process) while it drains a backlog
        built up by a short broker outage: its events are published again, never lost."""
        assert self.broker is not None
        self.broker.stop()
        time.sleep(3.0)
        self.broker.start()
        time.sleep(fault.after)
        self.bridge.kill()
        healed = time.monotonic()
        self.start_bridge()
        self.fault_done(fault, healed)

    def outage(self, fault: Fault) -> None:
        """A central bank node down for longer than a PvP's settlement window: the PvP
        proposed to its bank expires and releases its hold, finality goes on (3 of 4)."""
        time.sleep(fault.after)
        node = self.nodes[fault.target]
        proposer = next(cb for cb in self.cb_ids if cb != fault.target)
        node.kill()
        began = time.monotonic()
        sealed_at_start = self.finality().sealed_height
        held = self.probe(proposer, proposal_to=fault.target)
        self.probe_client.send(held)
        time.sleep(max(0.0, fault.hold - (time.monotonic() - began)))
        finality = self.finality()
        status = self.checker.bridge.GetPvp(
            bridge_pb.GetPvpRequest(proposer=held.body.sender, pvp_id=held.body.instruction_id),
            timeout=20,
        )
        healed = time.monotonic()
        node.start()
        wait_serving(self.config.central_bank(fault.target).address, time.monotonic() + 90)
        self.fault_done(
            fault,
            healed,
            finality_continued=finality.final_height > sealed_at_start,
            pvp_expired_during_outage=status.status == types.OUTCOME_EXPIRED,
        )

    def finality(self) -> bridge_pb.GetFinalityResponse:
        reply: bridge_pb.GetFinalityResponse = self.checker.bridge.GetFinality(
            bridge_pb.GetFinalityRequest(), timeout=20
        )
        return reply

    def network(self, fault: Fault) -> None:
        time.sleep(fault.after)
        proxy = self.bridge_proxy if fault.target == "bridge-link" else self.bank_proxy
        proxy.set(fault.mode, fault.delay, fault.loss)
        time.sleep(fault.hold)
        proxy.set("pass")
        self.fault_done(fault, time.monotonic())

    def clock_jump(self, fault: Fault) -> None:
        time.sleep(fault.after)
        self.clock.set(fault.offset_ms)
        time.sleep(fault.hold)
        self.clock.set(0)
        self.fault_done(fault, time.monotonic())

    def disk_full(self, fault: Fault) -> None:
        """The disk under the store fills up while a long read (a researcher's export, say)
        keeps SQLite from recycling its write-ahead log: commits fail, clients must be told
        "not decided", and settlement must resume by itself once space returns."""
        assert self.disk is not None
        time.sleep(fault.after)
        before = read_answers([self.load_record])
        reader = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM blocks").fetchone()
        filled = self.disk.fill()
        began = time.monotonic()
        while time.monotonic() - began < max(fault.hold, DISK_FULL_CAP):
            time.sleep(0.2)
            if time.monotonic() - began >= fault.hold and self._not_decided_since(before):
                break
        during = read_answers([self.load_record])
        self.disk.free()
        reader.close()
        healed = time.monotonic()
        new = {k: v - before.get(k, 0) for k, v in during.items() if v - before.get(k, 0)}
        self.fault_done(
            replace(fault, hold=round(healed - began, 2)),
            healed,
            filled_bytes=filled,
            final_refusals_while_full={
                k: v for k, v in new.items() if k != "ack" and not k.startswith("not_decided:")
            },
            not_decided_while_full={k: v for k, v in new.items() if k.startswith("not_decided:")},
        )

    def _not_decided_since(self, before: dict[str, int]) -> bool:
        now = read_answers([self.load_record])
        return any(k.startswith("not_decided:") and v > before.get(k, 0) for k, v in now.items())

    # ------------------------------------------------------------------ the run

    def skip_reason(self, scenario: Scenario) -> str | None:
        if scenario.needs and not feature_present(scenario.needs):
            return f"this build has no {scenario.needs} component yet (no bridge module for it)"
        if scenario.needs == "mqtt" and mosquitto_binary() is None:
            return "mosquitto is not installed (Debian: apt-get install mosquitto)"
        if scenario.needs == "postgres" and binaries() is None:
            return "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
        if scenario.needs not in ("", "postgres", "mqtt"):
            return f"{scenario.needs} is present but this campaign has no driver for it yet"
        if scenario.name == "disk-full" and self.disk_problem:
            return self.disk_problem
        return None

    def run_scenario(self, scenario: Scenario) -> None:
        began = time.monotonic()
        faults = list(scenario.faults)
        for fault in faults:
            if fault.target == "broker":
                self.broker_outage(fault)
                continue
            if fault.target == "mqtt-publisher":
                self.publisher_kill(fault)
                continue
            {
                "kill": lambda f=fault: self.kill(f),
                "outage": lambda f=fault: self.outage(f),
                "net": lambda f=fault: self.network(f),
                "clock": lambda f=fault: self.clock_jump(f),
                "disk-full": lambda f=fault: self.disk_full(f),
            }[fault.kind]()
        report = self.check(scenario.name)
        self.figures.scenarios.append(
            {
                "name": scenario.name,
                "faults": len(faults),
                "seconds": round(time.monotonic() - began, 1),
                "checks": report.to_json(),
            }
        )

    def own(self, scenario: Scenario) -> bool:
        """Whether this part of the campaign runs `scenario` (the SQLite part: all but the
        PostgreSQL ones)."""
        return scenario.needs != "postgres"

    def run_part(self) -> Part:
        started = time.monotonic()
        try:
            self.setup()
            for scenario in self.scenarios:
                if not self.own(scenario):
                    continue
                reason = self.skip_reason(scenario)
                if reason is not None:
                    self.figures.skipped[scenario.name] = reason
                    continue
                self.run_scenario(scenario)
            final = self.check("final", final=True)
            events = None
            if self.events is not None:
                events = self.events.wait_for(read_acks(self.records()), timeout=60)
            memory = {role: rss_bytes(pid) >> 20 for role, pid in self.pids().items()}
            base = {role: rss >> 20 for role, rss in self.memory_base.items()}
        finally:
            self.teardown()
        seconds = time.monotonic() - started
        return Part(self.name, final, self.records(), base, memory, seconds, events)


@dataclass
class Part:
    """What one part of the campaign (one network, one store) ended with."""

    name: str
    final: CheckReport
    records: list[Path]
    rss_start: dict[str, int]
    rss_end: dict[str, int]
    seconds: float
    events: dict[str, Any] | None = None


def fault_failures(faults: list[dict[str, Any]], longest_call_s: float) -> list[str]:
    """What a fault showed that it must not: finality stopped or a PvP still held through a
    central bank node's outage, a final refusal while the disk was full, a client call that
    outlived its deadline (a hang)."""
    failures = []
    for fault in faults:
        name = f"{fault['kind']} {fault['target']}"
        if "finality_continued" in fault and not fault["finality_continued"]:
            failures.append(f"{name}: finality stopped while the node was down")
        if "pvp_expired_during_outage" in fault and not fault["pvp_expired_during_outage"]:
            failures.append(f"{name}: the PvP proposed to its bank did not expire")
        if fault.get("final_refusals_while_full"):
            failures.append(f"{name}: final refusals {fault['final_refusals_while_full']}")
    if longest_call_s > HANG_FACTOR * CALL_TIMEOUT:
        failures.append(f"a call took {longest_call_s} s (deadline {CALL_TIMEOUT} s)")
    return failures


def summary(
    seed: int, profile: Profile, scenarios: list[Scenario], figures: Figures, parts: list[Part]
) -> dict[str, Any]:
    recoveries = sorted(figures.recoveries)
    records = [r for part in parts for r in part.records]
    finals = [part.final for part in parts]
    checked = figures.scenarios
    longest = longest_call(records)
    failures = fault_failures(figures.faults, longest)
    return {
        "seed": seed,
        "profile": profile.name,
        "schedule_digest": schedule_digest(scenarios),
        "seconds": round(sum(part.seconds for part in parts), 1),
        "kills_planned": profile.kills,
        "kills_survived": len(figures.kills),
        "kills_by_target": _count(k["target"] for k in figures.kills),
        "bridge_kill_phases": _count(
            k.get("phase", "") for k in figures.kills if k["target"] == "bridge"
        ),
        "faults": len(figures.faults),
        "acknowledged_checked": sum(f.acknowledged for f in finals),
        "lost": sum(f.lost for f in finals),
        "misplaced": sum(f.misplaced for f in finals),
        "doubled": sum(f.doubled for f in finals) + sum(s["checks"]["doubled"] for s in checked),
        "resubmitted_as_duplicates": sum(f.resubmitted for f in finals)
        + sum(s["checks"]["resubmitted"] for s in checked),
        "replica_disagreements": sum(f.replica_disagreements for f in finals),
        "stuck_holds": sum(f.stuck_holds for f in finals),
        "expiries_checked": sum(f.expiries_checked for f in finals),
        "recovery_s": {
            "p50": recoveries[len(recoveries) // 2] if recoveries else None,
            "max": recoveries[-1] if recoveries else None,
        },
        "events_lost": next((p.events["events_lost"] for p in parts if p.events is not None), None),
        "events": {p.name: p.events for p in parts if p.events is not None},
        "answers": read_answers(records),
        "longest_call_s": longest,
        "call_timeout_s": CALL_TIMEOUT,
        "unrecovered": figures.unrecovered,
        "fault_failures": failures,
        "all_checks_passed": not figures.unrecovered
        and not failures
        and all(p.events is None or p.events["events_lost"] == 0 for p in parts)
        and all(f.passed for f in finals)
        and all(s["checks"]["passed"] for s in checked),
        "final_checks": {part.name: part.final.to_json() for part in parts},
        "scenarios": checked,
        "skipped": figures.skipped,
        "fault_log": figures.faults,
        "rss_mib_at_start": {part.name: part.rss_start for part in parts},
        "rss_mib_at_end": {part.name: part.rss_end for part in parts},
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def run_campaign(seed: int, profile: str, directory: Path | None, keep: bool) -> dict[str, Any]:
    """Run the campaign in `directory` (a fresh temporary one by default): the SQLite part,
    then the PostgreSQL part when this build has that store and the server is installed."""
    from participants.chaos.postgres import PostgresCampaign

    base = directory or Path(tempfile.mkdtemp(prefix="cbdc-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    chosen = PROFILES[profile]
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        first = Campaign(seed, chosen, base / "sqlite")
        parts = [first.run_part()]
        wanted = [s for s in first.scenarios if s.needs == "postgres"]
        if wanted and {first.skip_reason(s) for s in wanted} == {None}:
            second = PostgresCampaign(seed, chosen, base / "postgres", first.figures)
            parts.append(second.run_part())
        result = summary(seed, chosen, first.scenarios, first.figures, parts)
        result["store_on_tmpfs"] = first.disk_problem is None
        result["directory"] = str(base) if keep or directory else None
        return result
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep and directory is None:
            shutil.rmtree(base, ignore_errors=True)
