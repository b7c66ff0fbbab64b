"""Locust baseline: the same gRPC user code against a trivial echo service.

    python -m loadtest.echo --port 50099 &
    locust -f loadtest/scenarios/echo.py --headless -u 50 -r 50 -t 15s --host 127.0.0.1:50099

Every task is one unary echo of a signed-instruction-sized payload, recorded by the same
channel as the bridge's RPCs; the RPC rate reached is the load generator's own ceiling
for the chosen users and processes (`bench e2e` reports it as `echo_rpc_per_s`).
"""

from __future__ import annotations

from typing import Any

from locust import tag, task

from loadtest.echo import ECHO_METHOD, PAYLOAD
from loadtest.grpc_user import GrpcUser
from loadtest.settings import LoadSettings


class EchoUser(GrpcUser):
    """Calls the unary echo back to back (or at the pace of LOADTEST_RATE)."""

    wait_time = LoadSettings.from_environment().wait_time()

    def on_start(self) -> None:
        address = self.host or LoadSettings.from_environment().echo_address
        if not address:
            raise RuntimeError("give the echo service's address with --host or LOADTEST_ECHO")
        self.echo: Any = self.channel(address).unary_unary(ECHO_METHOD)

    @tag("echo")
    @task
    def echo_once(self) -> None:
        self.echo(PAYLOAD, timeout=10.0)
