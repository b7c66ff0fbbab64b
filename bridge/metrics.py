"""Cheap cumulative timers and counters of one node, exported as Prometheus metrics.

Every node (the bridge, each central bank node) adds up, per stage of its hot path, how often
the stage ran, how many items it handled, and the wall and CPU time it took:

    with VERIFY.timed(items=len(signatures)):
        ...

A stage is timed only around code that does not `await`, so its time is what the running thread
spent on it. Per-message stages read the monotonic clock only (a fraction of a microsecond per
use, so the timers stay on in production); per-batch stages also read the thread's CPU clock
(`time.thread_time_ns`). Nested stages keep their own time only.

`serve(port)` exports them with `prometheus_client` (with the process's own CPU and memory
metrics) on `/metrics`; benchmarks scrape the endpoint before and after a run and print the
difference per settled PvP, the node's CPU budget by stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import REGISTRY, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "BLOCK_ENTRIES",
    "STAGES",
    "Stage",
    "gauge",
    "serve",
    "stage",
]

_perf = time.perf_counter_ns
_cpu = time.thread_time_ns


class Stage:
    """Cumulative calls, items, wall and thread-CPU nanoseconds of one stage of a node."""

    __slots__ = ("calls", "cpu_ns", "items", "name", "thread_cpu", "wall_ns")

    def __init__(self, name: str, *, thread_cpu: bool = False) -> None:
        self.name = name
        self.thread_cpu = thread_cpu
        self.calls = 0
        self.items = 0
        self.wall_ns = 0
        self.cpu_ns = 0

    def timed(self, items: int = 1) -> _Timing:
        """A context manager adding the time of its body (which must not await) to the stage."""
        return _Timing(self, items)

    def add(self, wall_ns: int, cpu_ns: int, items: int = 1) -> None:
        self.calls += 1
        self.items += items
        self.wall_ns += wall_ns
        self.cpu_ns += cpu_ns


class _Timing:
    """One timed run of a stage. Stages may nest (a replay that verifies signatures): each
    stage keeps its own time only, the inner stage's time is taken off the outer one's."""

    __slots__ = ("_cpu", "_inner_cpu", "_inner_wall", "_items", "_outer", "_stage", "_wall")

    def __init__(self, stage: Stage, items: int) -> None:
        self._stage = stage
        self._items = items
        self._wall = 0
        self._cpu = 0
        self._inner_wall = 0
        self._inner_cpu = 0
        self._outer: _Timing | None = None

    def __enter__(self) -> _Timing:
        local = _local
        self._outer = getattr(local, "active", None)
        local.active = self
        self._wall = _perf()
        if self._stage.thread_cpu:
            self._cpu = _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = _perf() - self._wall
        cpu = _cpu() - self._cpu if self._stage.thread_cpu else wall
        stage = self._stage
        stage.calls += 1
        stage.items += self._items
        stage.cpu_ns += cpu - self._inner_cpu
        stage.wall_ns += wall - self._inner_wall
        outer = self._outer
        _local.active = outer
        if outer is not None:
            outer._inner_cpu += cpu
            outer._inner_wall += wall


_local = threading.local()
STAGES: Final[dict[str, Stage]] = {}
_GAUGES: dict[str, tuple[str, Callable[[], float]]] = {}


def stage(name: str, *, thread_cpu: bool = False) -> Stage:
    """The process's timer for stage `name` (created on first use).

    `thread_cpu`: also read the thread's CPU clock. That is a system call (about 1-2 us here,
    twenty times a monotonic clock read), so it suits stages that run once per batch or block;
    a stage run per message counts its wall time as CPU time, which is what it is on the event
    loop's thread as long as the machine is not overloaded."""
    found = STAGES.get(name)
    if found is None:
        found = STAGES[name] = Stage(name, thread_cpu=thread_cpu)
    return found


def gauge(name: str, documentation: str, read: Callable[[], float]) -> None:
    """Export `read()` as gauge `cbdc_<name>` (read at each scrape: a queue depth, a height)."""
    _GAUGES[name] = (documentation, read)


# entries per sealed block (on the bridge), or per replayed block (on a central bank node)
BLOCK_ENTRIES: Final = Histogram(
    "cbdc_block_entries",
    "Entries per block sealed (bridge) or replayed (central bank node).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)


class _StageCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stages = list(STAGES.values())
        families = (
            ("cbdc_stage_calls", "Times each stage ran.", lambda s: s.calls),
            ("cbdc_stage_items", "Items (instructions, signatures...) each stage handled.",
             lambda s: s.items),
            ("cbdc_stage_cpu_seconds", "Thread CPU seconds spent in each stage.",
             lambda s: s.cpu_ns / 1e9),
            ("cbdc_stage_wall_seconds", "Wall-clock seconds spent in each stage.",
             lambda s: s.wall_ns / 1e9),
        )  # fmt: skip
        for name, documentation, value in families:
            family = CounterMetricFamily(name, documentation, labels=["stage"])
            for s in stages:
                family.add_metric([s.name], value(s))
            yield family
        for name, (documentation, read) in list(_GAUGES.items()):
            yield GaugeMetricFamily(f"cbdc_{name}", documentation, value=read())


REGISTRY.register(_StageCollector())


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve `/metrics` over HTTP on `host:port` (0: a free port) in a daemon thread; the port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
