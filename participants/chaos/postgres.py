"""The PostgreSQL part of the campaign: two bridge processes on one database, one leading.

The leading bridge process (the one the `leader` row names) is SIGKILLed at random moments
under load and restarted (it comes back as a standby); the PostgreSQL server itself is stopped
and started again. The same load client, probes and checks as the SQLite part run against it;
the checks read the database through its URL.
"""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg

from loadtest.pgserver import PostgresServer, binaries, start_server
from participants.chaos.campaign import NODE, Campaign
from participants.chaos.checks import Checker
from participants.chaos.faults import ManagedProcess
from participants.chaos.load import LoadClient, parse
from participants.chaos.schedule import Fault, Scenario, plan
from participants.launcher import free_ports, wait_serving
from participants.network_config import generate_network

LEADER_TIMEOUT = 60.0


class PostgresCampaign(Campaign):
    name = "postgres"
    server: PostgresServer | None = None

    def own(self, scenario: Scenario) -> bool:
        return scenario.needs == "postgres"

    def setup(self) -> None:
        d = self.directory
        bin_dir = binaries()
        assert bin_dir is not None
        self.server = start_server(bin_dir)
        self.url = self.server.create_database()
        ports = free_ports(10)
        config = generate_network(d / "net", ports=ports[:9])
        self.config = replace(config, bridge_store=self.url, bridge_ports=(ports[0], ports[9]))
        self.config.save()
        self.cb_ids = [cb.id for cb in self.config.central_banks]
        self.scenarios = plan(self.seed, self.profile, self.cb_ids)
        self.disk, self.disk_problem, self.proxies = None, "no disk faults on PostgreSQL", []
        logs = d / "logs"
        self.bridges = [
            self.managed(
                f"bridge-{i}",
                [*NODE, "bridge", "--network", str(d / "net"), "--port", str(port)],
                logs / f"bridge-{i}.log",
            )
            for i, port in enumerate(self.config.bridge_ports)
        ]
        self.bridge = self.bridges[0]
        self.nodes = {
            cb: self.managed(
                cb, [*NODE, "central-bank", cb, "--network", str(d / "net")], logs / f"{cb}.log"
            )
            for cb in self.cb_ids
        }
        for bridge, address in zip(self.bridges, self.config.bridge_addresses, strict=True):
            bridge.start()
            wait_serving(address, time.monotonic() + 90)
        for node in self.nodes.values():
            node.start()
        for cb in self.config.central_banks:
            wait_serving(cb.address, time.monotonic() + 90)
        self.checker = Checker(self.config, self.url)
        self.fund()
        probes = d / "probes.jsonl"
        self.probe_client = LoadClient(
            self.config,
            probes,
            self.seed,
            parse([str(d / "net"), str(probes), "--instruction-deadline", "90"]),
        )
        self.start_load()
        self.recover()
        self.memorise_baseline()

    def teardown(self) -> None:
        super().teardown()
        if self.server is not None:
            self.server.remove()

    def leader(self) -> ManagedProcess:
        """The bridge process the database names as leader (waits for one to lead)."""
        deadline = time.monotonic() + LEADER_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    row = conn.execute("SELECT holder FROM leader WHERE id = 1").fetchone()
                holder = "" if row is None else str(row[0])
                pid = int(holder.rsplit("/", 1)[1]) if "/" in holder else 0
                for bridge in self.bridges:
                    if bridge.pid == pid and bridge.alive():
                        return bridge
            except (psycopg.Error, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no bridge process leads")
            time.sleep(0.1)

    def kill(self, fault: Fault) -> None:
        if fault.target != "leading-bridge":
            super().kill(fault)
            return
        leader = self.leader()
        time.sleep(fault.after)
        leader.kill()
        healed = time.monotonic()
        leader.start()
        index = self.bridges.index(leader)
        wait_serving(self.config.bridge_addresses[index], time.monotonic() + 90)
        self.fault_done(replace(fault, target="leading-bridge", phase=leader.name), healed)

    def outage(self, fault: Fault) -> None:
        if fault.target != "postgres":
            super().outage(fault)
            return
        assert self.server is not None
        time.sleep(fault.after)
        self.server.stop()
        time.sleep(fault.hold)
        self.server.start()
        self.fault_done(fault, time.monotonic())
