"""Locust's recording channel (`loadtest.grpc_user`) against a real loopback gRPC server.

The client runs in a subprocess, as Locust runs it: `loadtest.grpc_user` switches grpcio to
gevent when imported, which must not happen inside the test process. The subprocess calls a
server in this process through `shared_channel` with a stand-in Locust environment whose
request hook records every event it is given, and prints those events and what each call
returned or raised as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.errors import Reason, Refused
from bridge.status import rich_status

SERVICE = "test.v1.Probe"
ROOT = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent(
    """
    import json, sys, time

    import grpc

    from loadtest.grpc_user import shared_channel

    events = []


    class Hook:
        def fire(self, **event):
            error = event["exception"]
            event["exception"] = None if error is None else error.code().name
            events.append(event)


    class Environment:
        class events:
            request = Hook()


    address = sys.argv[1]
    plain = shared_channel(Environment, address)
    expecting = shared_channel(Environment, address, frozenset({"INSUFFICIENT_FUNDS"}))
    echo = "/test.v1.Probe/Echo"
    out = {"same_method_object": plain.unary_unary(echo) is plain.unary_unary(echo)}
    out["same_channel"] = shared_channel(Environment, address) is plain


    def step(name, call):
        before = len(events)
        try:
            outcome = {"returned": call().hex()}
        except grpc.RpcError as error:
            outcome = {"raised": error.code().name}
        if name == "future":
            deadline = time.monotonic() + 10  # the done callback may run just after result()
            while len(events) == before and time.monotonic() < deadline:
                time.sleep(0.01)
        outcome["events"] = events[before:]
        out[name] = outcome


    step("echo", lambda: plain.unary_unary(echo)(b"abc", timeout=10))
    step("echo_registered", lambda: plain.unary_unary(echo, None, None, True)(b"ab", timeout=10))
    step("with_call", lambda: plain.unary_unary(echo).with_call(b"abcd", timeout=10)[0])
    step("future", lambda: plain.unary_unary(echo).future(b"abcde", timeout=10).result())
    step("refused", lambda: plain.unary_unary("/test.v1.Probe/Refuse")(b"x", timeout=10))
    step(
        "refused_expected",
        lambda: expecting.unary_unary("/test.v1.Probe/Refuse")(b"x", timeout=10),
    )
    step("failed", lambda: expecting.unary_unary("/test.v1.Probe/Fail")(b"x", timeout=10))
    print(json.dumps(out))
    """
)


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort_with_status(rich_status(Refused(Reason.INSUFFICIENT_FUNDS, "not enough CNY")))
    raise AssertionError("abort_with_status returned")


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.INTERNAL, "no reason given")
    raise AssertionError("abort returned")


@pytest.fixture(scope="module")
def probe_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def recorded(probe_address: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, probe_address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _one_event(outcome: dict[str, Any]) -> dict[str, Any]:
    events: list[dict[str, Any]] = outcome["events"]
    assert len(events) == 1, events
    assert events[0]["response_time"] >= 0
    return events[0]


@pytest.mark.parametrize(
    ("step", "payload"),
    [("echo", "abc"), ("echo_registered", "ab"), ("with_call", "abcd"), ("future", "abcde")],
)
def test_an_answered_call_fires_one_grpc_event_named_after_its_method(
    recorded: dict[str, Any], step: str, payload: str
) -> None:
    """Each answered call (plain, registered, with_call, future) fires one 'grpc' event."""
    outcome = recorded[step]
    assert outcome["returned"] == payload.encode().hex()
    event = _one_event(outcome)
    assert event["request_type"] == "grpc"
    assert event["name"] == "Probe/Echo"
    assert event["response_length"] == len(payload)
    assert event["exception"] is None


def test_a_refusal_not_expected_fires_one_failure_and_still_raises(
    recorded: dict[str, Any],
) -> None:
    """A refusal the user does not expect: one 'grpc' event carrying the error, and it raises."""
    outcome = recorded["refused"]
    assert outcome["raised"] == "FAILED_PRECONDITION"
    event = _one_event(outcome)
    assert (event["request_type"], event["name"]) == ("grpc", "Probe/Refuse")
    assert event["exception"] == "FAILED_PRECONDITION"
    assert event["response_length"] == 0


def test_an_expected_refusal_fires_one_refused_event_without_an_exception(
    recorded: dict[str, Any],
) -> None:
    """An expected refusal: one 'refused' event named by its reason, no exception; it raises."""
    outcome = recorded["refused_expected"]
    assert outcome["raised"] == "FAILED_PRECONDITION"
    event = _one_event(outcome)
    assert (event["request_type"], event["name"]) == ("refused", "INSUFFICIENT_FUNDS")
    assert event["exception"] is None


def test_a_failure_without_a_reason_stays_a_failure_when_refusals_are_expected(
    recorded: dict[str, Any],
) -> None:
    """A status without an ErrorInfo reason is a failure even on an expecting channel."""
    outcome = recorded["failed"]
    assert outcome["raised"] == "INTERNAL"
    event = _one_event(outcome)
    assert (event["request_type"], event["name"]) == ("grpc", "Probe/Fail")
    assert event["exception"] == "INTERNAL"


def test_the_channel_and_each_method_are_built_once_per_process(
    recorded: dict[str, Any],
) -> None:
    """shared_channel returns one channel per address; it keeps one multicallable per method."""
    assert recorded["same_channel"] is True
    assert recorded["same_method_object"] is True
