"""`cbdc-bridge chaos --soak SECONDS`: half the measured max rate, held, with figures over time.

The network of the campaign (no faults) is started; a load client without a rate limit
measures the max rate for `MEASURE_SECONDS`; then a load client holds half that rate for the
soak. Every `WINDOW` seconds the soak samples acknowledged instructions per second and the RSS
of every process; at the end it reports errors (refusals other than business ones, and
instructions left undecided), the throughput of the last minute against the first, the RSS
growth of every process, and runs the campaign's checks.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from participants.chaos.campaign import Campaign
from participants.chaos.checks import read_answers
from participants.chaos.faults import rss_bytes
from participants.chaos.schedule import QUICK

MEASURE_SECONDS = 20.0
WINDOW = 10.0
# refusals a bank's own instruction may legitimately get (funds, limits, a PvP that expired)
BUSINESS = frozenset({"INSUFFICIENT_FUNDS", "PVP_EXPIRED", "PVP_NOT_PENDING"})


def _acks(path: Path) -> int:
    return read_answers([path]).get("ack", 0)


def run_soak(seed: int, seconds: float, directory: Path | None) -> dict[str, Any]:
    base = directory or Path(tempfile.mkdtemp(prefix="cbdc-soak-"))
    campaign = Campaign(seed, QUICK, base, small_disk=False)
    try:
        campaign.setup()
        campaign.load.stop()
        campaign.profile = replace(QUICK, rate=10_000.0, workers=16)
        campaign.start_load()
        first = _acks(campaign.load_record)
        time.sleep(MEASURE_SECONDS)
        max_rate = (_acks(campaign.load_record) - first) / MEASURE_SECONDS
        campaign.load.stop()
        campaign.profile = replace(QUICK, rate=max(1.0, max_rate / 2), workers=8)
        campaign.start_load()
        record = campaign.load_record
        base_rss = {role: rss_bytes(pid) for role, pid in campaign.pids().items()}
        samples: list[dict[str, Any]] = []
        last, began = _acks(record), time.monotonic()
        while time.monotonic() - began < seconds:
            time.sleep(WINDOW)
            now = _acks(record)
            samples.append(
                {
                    "t": round(time.monotonic() - began, 1),
                    "per_s": round((now - last) / WINDOW, 1),
                    "rss_mib": {r: rss_bytes(p) >> 20 for r, p in campaign.pids().items()},
                }
            )
            last = now
        end_rss = {role: rss_bytes(pid) for role, pid in campaign.pids().items()}
        report = campaign.check("soak", final=True)
        campaign.load.stop()
        answers = read_answers([record])
        per_minute = max(1, int(60 / WINDOW))
        first_minute = samples[:per_minute]
        last_minute = samples[-per_minute:]

        def mean(items: list[dict[str, Any]]) -> float:
            return float(sum(s["per_s"] for s in items)) / max(1, len(items))

        errors = sum(v for k, v in answers.items() if k != "ack" and k not in BUSINESS)
        return {
            "seed": seed,
            "seconds": seconds,
            "max_rate_per_s": round(max_rate, 1),
            "target_rate_per_s": round(max_rate / 2, 1),
            "errors": errors,
            "answers": answers,
            "throughput_first_minute": round(mean(first_minute), 1),
            "throughput_last_minute": round(mean(last_minute), 1),
            "last_over_first": round(mean(last_minute) / max(mean(first_minute), 1e-9), 3),
            "rss_growth": {
                role: round(end_rss[role] / base_rss[role] - 1, 3)
                for role in base_rss
                if base_rss[role] and role != "load"
            },
            "samples": samples,
            "checks": report.to_json(),
        }
    finally:
        campaign.teardown()
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
