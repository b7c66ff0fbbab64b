"""What reached the banks over MQTT: one SDK subscriber per bank, for the whole campaign.

Each bank's `SettlementSubscriber` (persistent session, gaps filled from its node's gRPC
settlement stream, as a bank would run it) runs in a thread of its own and records every event
it yields. After the campaign, an acknowledged instruction whose sender never saw its event is
an event lost; the figures also say how many events came over MQTT and how many the subscriber
had to fill from gRPC after an outage.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from participants.chaos.checks import Ack
from participants.network_config import NetworkConfig
from participants.sdk import BankClient, SettlementSubscriber


class EventWatch:
    """Subscribers for every bank of the network; `seen` maps (sender, id) to its source."""

    def __init__(self, config: NetworkConfig, network: Path) -> None:
        self.config = config
        self.network = network
        self.seen: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()
        self.stats: dict[str, dict[str, int]] = {}
        self.threads: list[threading.Thread] = []

    def start(self) -> EventWatch:
        for cb in self.config.central_banks:
            for bank in cb.banks:
                thread = threading.Thread(
                    target=self._follow, args=(cb.id, bank.id), daemon=True, name=f"mqtt-{bank.id}"
                )
                thread.start()
                self.threads.append(thread)
        return self

    def _follow(self, central_bank: str, bank: str) -> None:
        settings = self.config.mqtt_settings(bank)
        assert settings is not None
        client = BankClient.from_network(self.network, bank)
        subscriber = SettlementSubscriber(
            settings,
            central_bank=central_bank,
            bank=bank,
            from_seq=1,
            gaps=client.watch,
            identifier=f"chaos-{bank}",
        )
        with contextlib.suppress(Exception):
            for event in subscriber:
                with self.lock:
                    self.seen.setdefault((event.sender, event.instruction_id), event.source)
                    self.stats[bank] = subscriber.stats

    def wait_for(self, acks: Iterable[Ack], timeout: float) -> dict[str, Any]:
        """Wait until every acknowledged instruction reached its sender (or `timeout`); the
        figures of what arrived and how."""
        wanted = {(a.sender, a.instruction_id) for a in acks}
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = wanted - self.seen.keys()
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        with self.lock:
            sources = [self.seen[k] for k in wanted if k in self.seen]
            stats = {bank: dict(s) for bank, s in self.stats.items()}
        return {
            "events_expected": len(wanted),
            "events_lost": len(missing),
            "events_over_mqtt": sources.count("mqtt"),
            "events_filled_from_grpc": sources.count("grpc"),
            "duplicates_dropped": sum(s.get("duplicates", 0) for s in stats.values()),
            "lost_examples": sorted(f"{s}/{i}" for s, i in missing)[:5],
        }
