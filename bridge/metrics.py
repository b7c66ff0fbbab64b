"""Cheap cumulative timers and counters of one node, exported as Prometheus metrics.

Every node (the bridge, each central bank node) adds up, per stage of its hot path, how often
the stage ran, how many items it handled, and the wall and CPU time it took:

    with VERIFY.timed(items=len(signatures)):
        ...

A stage is timed only around code that does not `await`, so its time is what the running thread
spent on it. Nested stages keep their own time only. Wall time is read at every use (a monotonic
clock read, well under a microsecond). Thread CPU time (`time.thread_time_ns`) is a system call
costing a few microseconds here, so a per-message stage reads it on a random sample of its uses
(one in `CPU_SAMPLE`) and its CPU time is estimated as the sampled mean times the calls; a
per-batch stage (`thread_cpu=True`) reads it every time. CPU time, not wall time, is what the
budget counts: on a loaded machine a thread's wall time also counts the time it waited for a core.

`serve(port)` exports them with `prometheus_client` (with the process's own CPU and memory
metrics) on `/metrics`; benchmarks scrape the endpoint before and after a run and print the
difference per settled PvP, the node's CPU budget by stage.
"""

from __future__ import annotations

import random
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


CPU_SAMPLE = 8  # a per-message stage reads the thread's CPU clock on one use in this many


class Stage:
    """Cumulative calls, items, wall and thread-CPU nanoseconds of one stage of a node."""

    __slots__ = ("calls", "cpu_calls", "cpu_ns", "items", "name", "thread_cpu", "wall_ns")

    def __init__(self, name: str, *, thread_cpu: bool = False) -> None:
        self.name = name
        self.thread_cpu = thread_cpu
        self.calls = 0
        self.items = 0
        self.wall_ns = 0
        self.cpu_ns = 0  # over the `cpu_calls` uses whose CPU time was read
        self.cpu_calls = 0

    def timed(self, items: int = 1) -> _Timing:
        """A context manager adding the time of its body (which must not await) to the stage."""
        return _Timing(self, items)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of every call: measured, or estimated from the sampled calls."""
        if not self.cpu_calls:
            return 0.0
        return self.cpu_ns * self.calls / self.cpu_calls / 1e9


class _Timing:
    """One timed run of a stage. Stages may nest (a replay that verifies signatures): each
    stage keeps its own time only, the inner stage's time is taken off the outer one's. An
    inner stage reads the CPU clock exactly when its outer stage does."""

    __slots__ = (
        "_cpu", "_inner_cpu", "_inner_wall", "_items", "_outer", "_sampled", "_stage", "_wall",
    )  # fmt: skip

    def __init__(self, stage: Stage, items: int) -> None:
        self._stage = stage
        self._items = items
        self._wall = 0
        self._cpu = 0
        self._inner_wall = 0
        self._inner_cpu = 0
        self._sampled = False
        self._outer: _Timing | None = None

    def __enter__(self) -> _Timing:
        local = _local
        outer = self._outer = getattr(local, "active", None)
        local.active = self
        if outer is not None:
            self._sampled = outer._sampled
        else:
            self._sampled = self._stage.thread_cpu or _random() < _SAMPLE_SHARE
        self._wall = _perf()
        if self._sampled:
            self._cpu = _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = _perf() - self._wall
        stage = self._stage
        stage.calls += 1
        stage.items += self._items
        stage.wall_ns += wall - self._inner_wall
        outer = self._outer
        _local.active = outer
        if outer is not None:
            outer._inner_wall += wall
        if self._sampled:
            cpu = _cpu() - self._cpu
            stage.cpu_ns += cpu - self._inner_cpu
            stage.cpu_calls += 1
            if outer is not None:
                outer._inner_cpu += cpu


_local = threading.local()
_random = random.random
_SAMPLE_SHARE = 1 / CPU_SAMPLE


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


def _calls(s: Stage) -> float:
    return s.calls


def _items(s: Stage) -> float:
    return s.items


def _cpu_seconds(s: Stage) -> float:
    return s.cpu_seconds


def _wall_seconds(s: Stage) -> float:
    return s.wall_ns / 1e9


class _StageCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stages = list(STAGES.values())
        families: tuple[tuple[str, str, Callable[[Stage], float]], ...] = (
            ("cbdc_stage_calls", "Times each stage ran.", _calls),
            ("cbdc_stage_items", "Items (instructions, signatures...) each stage handled.",
             _items),
            ("cbdc_stage_cpu_seconds", "Thread CPU seconds spent in each stage (sampled).",
             _cpu_seconds),
            ("cbdc_stage_wall_seconds", "Wall-clock seconds spent in each stage.",
             _wall_seconds),
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
