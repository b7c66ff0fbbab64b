"""Locust users that speak gRPC: one `events.request` per unary RPC, fired by the channel.

This follows Locust's own gRPC example (examples/grpc/grpc_user.py): grpcio is switched to
gevent first (`grpc.experimental.gevent.init_gevent()`), users call ordinary synchronous stubs,
and the channel times each unary call and reports it. Unlike the example, the channel is not
wrapped in a client interceptor (`grpc.intercept_channel`), which builds a multicallable, call
details and an outcome object for every call: `RecordingChannel` keeps one recorded
multicallable per method and times the raw call itself. The runner never sees a protocol
library; every gRPC figure in a Locust report comes from `RequestRecorder`.

What gets reported per RPC:

- `request_type="grpc"`, `name="<Service>/<Method>"`: every call, with the gRPC error as the
  `exception` when it failed;
- `request_type="refused"`, `name=<reason code>` and no exception: a call refused for a reason
  the user class declares expected (`GrpcUser.expected_refusals`, e.g. `INSUFFICIENT_FUNDS` in
  the liquidity scenario). Such refusals are the system working as designed, so they count as
  requests but never as failures.

Channels are shared per process (one per address and set of expected refusals): users
multiplex their calls over one HTTP/2 connection per node, as a bank's gateway would.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import csv  # noqa: E402  (grpc must be switched to gevent before anything else uses it)
import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
from locust import User, events  # noqa: E402

from bridge.status import refusal_from_rpc_error  # noqa: E402

__all__ = [
    "CHANNEL_OPTIONS",
    "GrpcUser",
    "RecordedUnaryUnary",
    "RecordingChannel",
    "RequestRecorder",
    "listen",
    "method_label",
    "shared_channel",
    "stop_and_collect",
    "stop_then_quit",
]

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)
REQUEST_TYPE = "grpc"
REFUSED_TYPE = "refused"
log = logging.getLogger("loadtest")


def method_label(method: str | bytes) -> str:
    """'/bridge.v1.CentralBank/Pay' -> 'CentralBank/Pay' (the label in every report)."""
    text = method.decode() if isinstance(method, bytes) else method
    return text.rsplit(".", 1)[-1].lstrip("/")


def _length(response: Any) -> int:
    if isinstance(response, bytes):
        return len(response)
    size: int = response.ByteSize()
    return size


class RequestRecorder:
    """Fires exactly one Locust request event for each unary call it is told about."""

    def __init__(self, fire: Callable[..., Any], expected_refusals: frozenset[str]) -> None:
        self._fire = fire
        self._expected = expected_refusals

    def answered(self, label: str, start: float, response: Any) -> None:
        """A call that `label` names, begun at `start` (perf_counter), got `response`."""
        self._fire(
            request_type=REQUEST_TYPE,
            name=label,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=_length(response),
            exception=None,
        )

    def failed(self, label: str, start: float, error: grpc.RpcError) -> None:
        """A call ended with `error`: an expected refusal, or a failure."""
        elapsed = (time.perf_counter() - start) * 1000.0
        reason = refusal_from_rpc_error(error).reason.value if self._expected else ""
        if reason in self._expected:
            self._fire(
                request_type=REFUSED_TYPE,
                name=reason,
                response_time=elapsed,
                response_length=0,
                exception=None,
            )
        else:
            self._fire(
                request_type=REQUEST_TYPE,
                name=label,
                response_time=elapsed,
                response_length=0,
                exception=error,
            )


class RecordedUnaryUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    """A unary method of a raw channel whose every call is timed and reported.

    Built once per method and channel (`RecordingChannel.unary_unary` caches it), so a call
    costs the raw call plus two clock reads and one event: no interceptor, no per-call
    multicallable, call details or outcome objects (what `grpc.intercept_channel` builds)."""

    __slots__ = ("_call", "_label", "_recorder")

    def __init__(self, call: grpc.UnaryUnaryMultiCallable, label: str, recorder: RequestRecorder):
        self._call = call
        self._label = label
        self._recorder = recorder

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        start = time.perf_counter()
        try:
            response = self._call(
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
        except grpc.RpcError as error:
            self._recorder.failed(self._label, start, error)
            raise
        self._recorder.answered(self._label, start, response)
        return response

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        start = time.perf_counter()
        try:
            response, call = self._call.with_call(
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
        except grpc.RpcError as error:
            self._recorder.failed(self._label, start, error)
            raise
        self._recorder.answered(self._label, start, response)
        return response, call

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        start = time.perf_counter()
        future = self._call.future(
            request, timeout, metadata, credentials, wait_for_ready, compression
        )

        def done(finished: Any) -> None:
            if finished.cancelled():
                return  # cancelled by the caller: no answer to report
            error = finished.exception()
            if error is None:
                self._recorder.answered(self._label, start, finished.result())
            elif isinstance(error, grpc.RpcError):
                self._recorder.failed(self._label, start, error)

        future.add_done_callback(done)
        return future


class RecordingChannel(grpc.Channel):  # type: ignore[misc]
    """A raw channel whose unary calls are recorded (`RecordedUnaryUnary`); streams pass through
    unrecorded, as they did through the interceptor this replaces."""

    def __init__(self, channel: grpc.Channel, recorder: RequestRecorder) -> None:
        self._channel = channel
        self._recorder = recorder
        self._methods: dict[tuple[Any, ...], RecordedUnaryUnary] = {}

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> RecordedUnaryUnary:
        key = (method, request_serializer, response_deserializer, _registered_method)
        recorded = self._methods.get(key)
        if recorded is None:
            raw = self._channel.unary_unary(
                method, request_serializer, response_deserializer, _registered_method
            )
            recorded = self._methods[key] = RecordedUnaryUnary(
                raw, method_label(method), self._recorder
            )
        return recorded

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(*args, **kwargs)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecordingChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_channels: dict[tuple[str, frozenset[str]], grpc.Channel] = {}


def shared_channel(
    environment: Any, address: str, expected_refusals: frozenset[str] = frozenset()
) -> grpc.Channel:
    """This process's recording channel to `address` (created on first use, after any fork)."""
    key = (address, expected_refusals)
    channel = _channels.get(key)
    if channel is None:
        recorder = RequestRecorder(environment.events.request.fire, expected_refusals)
        raw = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        channel = _channels[key] = RecordingChannel(raw, recorder)
    return channel


def listen(hook: Any, handler: Callable[..., None]) -> None:
    """Register `handler` on a Locust event hook (Locust's hooks are untyped)."""
    hook.add_listener(handler)


def _add_run_time_option(parser: Any) -> None:
    parser.add_argument(
        "--graceful-run-time",
        type=float,
        default=0.0,
        include_in_web_ui=False,
        help="Stop after this many seconds: every user finishes its task and every worker "
        "reports its last figures, then quit (-t quits without waiting for --processes "
        "workers' last report, which the settlement cross-check needs)",
    )


_stop_scheduled: list[bool] = []


def _schedule_graceful_stop(environment: Any, **kwargs: Any) -> None:
    from locust.runners import WorkerRunner

    seconds = getattr(environment.parsed_options, "graceful_run_time", 0.0)
    if not seconds or _stop_scheduled or isinstance(environment.runner, WorkerRunner):
        return
    _stop_scheduled.append(True)
    gevent.spawn_later(seconds, stop_then_quit, environment.runner)


FINAL_REPORT = "loadtest_final_report"  # worker -> master: my last figures are sent
_final_reports: set[str] = set()  # on the master: workers whose last figures arrived


def stop_and_collect(runner: Any) -> None:
    """Stop the test gracefully: users finish their task (within --stop-timeout) and, with
    --processes, every worker's last figures reach the master before this returns."""
    from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner

    if not isinstance(runner, MasterRunner):
        runner.stop()
        return
    workers = {client.id for client in runner.clients.all}
    runner.stop()  # the master forgets each worker as it reports `client_stopped`
    # each stopped worker sends its last figures, then FINAL_REPORT (`_report_and_quit`);
    # one socket per worker keeps them in that order
    deadline = time.monotonic() + runner.environment.stop_timeout + WORKER_REPORT_INTERVAL
    while not workers <= _final_reports and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if not workers <= _final_reports:
        log.error("no last report from %d worker(s)", len(workers - _final_reports))


def stop_then_quit(runner: Any) -> None:
    """Stop gracefully (`stop_and_collect`), then quit."""
    stop_and_collect(runner)
    runner.quit()


def _on_final_report(environment: Any, msg: Any, **kwargs: Any) -> None:
    _final_reports.add(msg.node_id)


def _register_final_report(environment: Any, **kwargs: Any) -> None:
    from locust.runners import MasterRunner

    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(FINAL_REPORT, _on_final_report)


def _report_and_quit(runner: Any) -> None:
    """On a worker whose test has stopped: send the last figures, say so, and quit.

    The master forgets a worker once it has stopped, so it would never send it `quit`; a
    worker left waiting would only go after Locust's 60 s master-heartbeat timeout, and
    its last figures would otherwise wait for the next periodic report."""
    gevent.sleep(0)  # let the `client_stopped` message go first
    data: dict[str, Any] = {}
    runner.environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
    runner.send_message("stats", data)
    runner.send_message(FINAL_REPORT, None)
    runner.quit()


def _quit_worker_when_stopped(environment: Any, **kwargs: Any) -> None:
    """A graceful run ends at its first stop: each worker then reports and quits."""
    from locust.runners import WorkerRunner

    runner = environment.runner
    if isinstance(runner, WorkerRunner) and _graceful_run(environment):
        gevent.spawn(_report_and_quit, runner)


def _graceful_run(environment: Any) -> bool:
    return bool(getattr(environment.parsed_options, "graceful_run_time", 0.0))


def _write_final_stats_csv(environment: Any, **kwargs: Any) -> None:
    """Rewrite `<csv prefix>_stats.csv` with the final figures.

    Locust's CSV writer refreshes the file once a second and does not write again at exit,
    so requests that completed during the last second (or while users finished their task
    within --stop-timeout) would be missing from it, and the cross-check would see fewer
    settlements than the ledger. At `quitting` every user has stopped (and every worker has
    reported), so the figures written here are the final ones.
    """
    from locust.runners import WorkerRunner
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    options = environment.parsed_options
    prefix = getattr(options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    with open(f"{prefix}_stats.csv", "w", newline="") as handle:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(handle))


class GrpcUser(User):
    """A Locust user whose calls go through recording gRPC channels."""

    abstract = True
    expected_refusals: ClassVar[frozenset[str]] = frozenset()

    def channel(self, address: str) -> grpc.Channel:
        return shared_channel(self.environment, address, self.expected_refusals)

    def fire(
        self,
        request_type: str,
        name: str,
        response_time_ms: float,
        *,
        response_length: int = 0,
        exception: BaseException | None = None,
    ) -> None:
        """Report a derived measurement (one that is not itself an RPC)."""
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time_ms,
            response_length=response_length,
            exception=exception,
        )


listen(events.init_command_line_parser, _add_run_time_option)
listen(events.test_start, _schedule_graceful_stop)
listen(events.quitting, _write_final_stats_csv)
listen(events.init, _register_final_report)
listen(events.test_stop, _quit_worker_when_stopped)
