"""Stage timers: cumulative, nested stages keep their own time, served as Prometheus metrics."""

from __future__ import annotations

import importlib
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import STAGES, gauge, serve, stage


def burn(n: int) -> int:
    return sum(i * i for i in range(n))


def test_a_stage_adds_up_calls_items_and_time() -> None:
    """Every use adds a call, its items and some wall time; CPU time is measured per batch."""
    timer = stage("test-batch", thread_cpu=True)
    for _ in range(3):
        with timer.timed(items=5):
            burn(20_000)
    assert (timer.calls, timer.items, timer.cpu_calls) == (3, 15, 3)
    assert timer.wall_ns > 0
    assert timer.cpu_seconds > 0


def test_a_nested_stage_is_taken_off_the_outer_one() -> None:
    """The inner stage's time is not counted twice: the outer keeps only its own."""
    outer, inner = stage("test-outer", thread_cpu=True), stage("test-inner")
    with outer.timed(), inner.timed():
        burn(200_000)
    assert inner.cpu_calls == 1  # sampled because its outer stage is
    assert inner.cpu_ns > outer.cpu_ns
    assert inner.wall_ns > outer.wall_ns


def test_metrics_endpoint_serves_the_stage_counters_and_gauges() -> None:
    """`serve(0)` answers /metrics over HTTP with the stage counters and registered gauges."""
    timer = stage("test-served", thread_cpu=True)
    with timer.timed(items=7):
        burn(10_000)
    gauge("test_depth", "A test queue depth.", lambda: 42)
    port = serve(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        (s.name, s.labels.get("stage", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("cbdc_stage_calls_total", "test-served")] == 1
    assert samples[("cbdc_stage_items_total", "test-served")] == 7
    assert samples[("cbdc_stage_cpu_seconds_total", "test-served")] > 0
    assert samples[("cbdc_test_depth", "")] == 42
    assert ("process_cpu_seconds_total", "") in samples


def test_every_stage_of_the_nodes_is_in_the_documented_table() -> None:
    """docs/performance.md's stage table names every stage the bridge and central banks time."""
    for module in ("bridge.node.server", "bridge.node.publisher", "participants.central_bank.node"):
        importlib.import_module(module)
    text = (Path(__file__).parents[2] / "docs" / "performance.md").read_text()
    table = text.split("| stage | node | what it times |", 1)[1].split("\n\n", 1)[0]
    documented = {name for cell in re.findall(r"^\| ([^|]+) \|", table, re.M)
                  for name in re.findall(r"`([a-z_]+)`", cell)}  # fmt: skip
    timed = {name for name in STAGES if not name.startswith("test-")}
    assert timed <= documented, f"not in the table: {sorted(timed - documented)}"
