"""Channels a central bank node (or a tool holding its credentials) opens to the bridge and to
peer nodes: mutual TLS with its certificate when the network runs TLS, otherwise signed calls
with its key (`bridge.node.caller_auth`).

Tools that read the bridge directly (tests, benchmarks, operators' scripts) open
`bridge_channel(config, central_bank)`: they act for that central bank with its key or
certificate from the network directory.
"""

from __future__ import annotations

import grpc

from bridge.crypto import Signer
from bridge.node.caller_auth import (
    BRIDGE_AUDIENCE,
    CallerSigner,
    SignedChannel,
    SyncSignedCallInterceptor,
)
from bridge.tls import CHANNEL_OPTIONS_TLS, channel_credentials
from participants.network_config import NetworkConfig

__all__ = ["bridge_channel", "node_channel"]

MESSAGE_LIMIT = 64 * 1024 * 1024
# Reconnect within about a second of a peer's return, however long it was away. gRPC's default
# backoff between connection attempts starts at 1 s and grows by 1.6x up to 120 s, so after a
# four-minute bridge outage the nodes only came back 22-77 s after the bridge did. Capped at
# 1 s (with gRPC's own jitter), a loopback or LAN peer costs at most one refused connection
# attempt a second while it is away.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 1000),  # the least time given to one connection attempt
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# Notice a peer that stops answering without closing its connections (a paused process, a
# machine gone) within about 5 s: a ping every 2 s, even on an idle stream, unanswered for 3 s
# closes the connection, so the calls on it end "not decided" and the link moves to another
# bridge address instead of waiting on a stream nothing will ever answer (the servers accept
# pings that often: `bridge.node.server.SERVER_OPTIONS`).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.ping_timeout_ms", 3000),  # gRPC's own wait for a ping's answer (default 60 s)
]


def node_channel(
    config: NetworkConfig, address: str, me: str, *, audience: str, key: Signer
) -> grpc.aio.Channel:
    """An aio channel from central bank `me`'s node to `audience` ("bridge" or a peer's id)."""
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        *RECONNECT_OPTIONS,
        *KEEPALIVE_OPTIONS,
    ]
    if config.tls is None:
        signer = CallerSigner(chain_id=config.chain_id, caller=me, audience=audience, signer=key)
        return SignedChannel(grpc.aio.insecure_channel(address, options=options), signer)
    pki = config.directory / config.tls.directory
    return grpc.aio.secure_channel(
        address, channel_credentials(pki, me), options=[*options, *CHANNEL_OPTIONS_TLS]
    )


def bridge_channel(config: NetworkConfig, central_bank: str) -> grpc.Channel:
    """A synchronous channel to the bridge, authenticated as `central_bank`'s node."""
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    if config.tls is None:
        signer = CallerSigner(
            chain_id=config.chain_id,
            caller=central_bank,
            audience=BRIDGE_AUDIENCE,
            signer=config.load_key(central_bank),
        )
        channel = grpc.insecure_channel(config.bridge_address, options=options)
        return grpc.intercept_channel(channel, SyncSignedCallInterceptor(signer))
    pki = config.directory / config.tls.directory
    return grpc.secure_channel(
        config.bridge_address,
        channel_credentials(pki, central_bank),
        options=[*options, *CHANNEL_OPTIONS_TLS],
    )
