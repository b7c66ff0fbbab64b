"""How a client reaches a node: address, identity, TLS, deadlines and retries.

`BankSettings.from_network` reads a network directory (network.json, keys/, pki/) to find the
node of the bank's home central bank, the bank's signing key and, when the network runs mutual
TLS, the bank's certificate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from bridge.crypto import PrivateKey, Signer
from bridge.domain import ParticipantId
from bridge.tls import CHANNEL_OPTIONS_TLS, channel_credentials
from participants.network_config import NetworkConfig
from participants.sdk._errors import BridgeRpcError

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "BankSettings",
    "RetryPolicy",
    "Tls",
    "call_with_retry",
    "channel_options",
    "next_pause",
    "open_aio_channel",
    "open_channel",
    "remaining",
    "tls_of",
]

DEFAULT_TIMEOUT = 10.0
_CHANNEL_OPTIONS = (
    # reconnect quickly after a node restarts, so bounded retries can reach it again
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


@dataclass(frozen=True, slots=True)
class Tls:
    """Mutual TLS from a demo PKI directory: ca.pem and `name`.pem / `name`.key."""

    directory: Path
    name: str

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.directory, self.name)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries of calls that are not decided (`NotDecided`: UNAVAILABLE, OUTCOME_UNKNOWN,
    OVERLOADED, CATCHING_UP, cancelled or timed out in transport), within the call's deadline.

    Pauses grow exponentially with full jitter; a server's pushback hint (a `RetryInfo` detail,
    e.g. on RESOURCE_EXHAUSTED) replaces the pause it would have been. Instructions are resent
    unchanged (same id, same signed body): the bridge answers a resubmission with the original
    outcome, so nothing settles twice. Refusals are final and never retried.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoffs(self) -> Iterator[float]:
        """Pauses before each retry (full jitter), `max_attempts - 1` of them."""
        backoff = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield random.uniform(backoff / 2, backoff)
            backoff = min(backoff * self.multiplier, self.max_backoff)


NO_RETRY = RetryPolicy(max_attempts=1)


def channel_options(tls: Tls | None) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
    if tls is not None:
        options.extend(CHANNEL_OPTIONS_TLS)
    return options


def open_channel(address: str, tls: Tls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=channel_options(None))
    return grpc.secure_channel(address, tls.credentials(), options=channel_options(tls))


def open_aio_channel(address: str, tls: Tls | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=channel_options(None))
    return grpc.aio.secure_channel(address, tls.credentials(), options=channel_options(tls))


@dataclass(frozen=True, slots=True)
class BankSettings:
    """Everything a bank client needs to connect and sign."""

    address: str
    bank_id: ParticipantId
    key: Signer = field(repr=False)
    tls: Tls | None = None
    central_bank: ParticipantId = ""

    @classmethod
    def from_network(
        cls,
        network: Path,
        bank_id: ParticipantId,
        *,
        central_bank: ParticipantId | None = None,
        key_path: Path | None = None,
    ) -> BankSettings:
        """Find the bank's home node, key and certificate in a network directory.

        `central_bank` and `key_path` serve banks admitted after network.json was written.
        Raises KeyError for a bank or central bank the directory does not know and OSError
        or ValueError for a missing or unreadable key.
        """
        config = NetworkConfig.load(network)
        home = config.central_bank(central_bank) if central_bank else config.home_of(bank_id)
        key = PrivateKey.load(key_path if key_path is not None else config.key_path(bank_id))
        return cls(home.address, bank_id, key, tls_of(config, bank_id), home.id)


def tls_of(config: NetworkConfig, name: str) -> Tls | None:
    """The TLS identity `name` presents in this network, or None when it runs without TLS."""
    if config.tls is None:
        return None
    return Tls(config.directory / config.tls.directory, name)


def call_with_retry(
    method: Callable[..., Any],
    request: Message,
    *,
    timeout: float,
    retry: RetryPolicy,
    metadata: Sequence[tuple[str, str]] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """One unary call with a deadline `timeout` s away, the same request retried while it is
    not decided, with backoff, before that deadline."""
    deadline = time.monotonic() + timeout
    pauses = retry.backoffs()
    while True:
        try:
            return method(request, timeout=remaining(deadline), metadata=metadata)
        except grpc.RpcError as error:
            failure = BridgeRpcError.from_rpc_error(error)
            pause = next_pause(failure, pauses, deadline)
            if pause is None:
                raise failure from error
        sleep(pause)


def remaining(deadline: float) -> float:
    """Seconds left before `deadline` (a sliver past it, so the call fails as timed out)."""
    return max(deadline - time.monotonic(), 0.001)


def next_pause(failure: BridgeRpcError, pauses: Iterator[float], deadline: float) -> float | None:
    """The pause before trying again after `failure`, or None to give up: a refusal is final;
    a call not decided is retried while attempts and time are left, after the server's
    pushback hint when it gave one, else after the next backoff."""
    if not failure.retryable:
        return None
    pause = next(pauses, None)
    if pause is None:
        return None
    if failure.retry_after is not None:
        pause = failure.retry_after
    if time.monotonic() + pause >= deadline:
        return None
    return pause
