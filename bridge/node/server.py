"""Running a bridge node: the ledger, its sequencer and the gRPC server around them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridge._proto.bridge.v1 import bridge_ledger_pb2, bridge_ledger_pb2_grpc
from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier
from bridge.domain import Genesis
from bridge.log.blocks import SealedBlock
from bridge.metrics import gauge
from bridge.node import fault_hooks
from bridge.node.caller_auth import BRIDGE_AUDIENCE, CallerAuthenticator, CallerAuthInterceptor
from bridge.node.feed import ChainFeed
from bridge.node.publisher import CONSUMER as PUBLISHER
from bridge.node.publisher import OutboxPublisher
from bridge.node.publisher import export_gauges as export_publisher_gauges
from bridge.node.request_guard import RequestGuard
from bridge.node.sequencer import MonotonicClock, Sequencer, wall_clock_ms
from bridge.node.service import BridgeLedgerService
from bridge.node.shedding import DEFAULT_MAX_IN_FLIGHT, InFlightLimit
from bridge.notify import MqttSettings
from bridge.store.base import is_postgres, open_store
from bridge.store.sqlite import SqliteStore
from bridge.tls import server_credentials

log = logging.getLogger("bridge.node")
SERVICE_NAME = bridge_ledger_pb2.DESCRIPTOR.services_by_name["BridgeLedger"].full_name
MESSAGE_LIMIT = 64 * 1024 * 1024
# Calls the gRPC core has received but the Python server has not picked up yet. Past a soft
# limit (default 1,000) the core drops a growing share of them at random, and past the hard
# limit (default 3,000) all of them, answering CANCELLED with no reason: a burst of a few
# thousand concurrent calls lost a quarter of them that way. Raised far above any burst, every
# call reaches the in-flight bound (bridge.node.shedding), which answers RESOURCE_EXHAUSTED
# with a reason and a pushback hint in microseconds.
MAX_PENDING_CALLS = 1 << 17
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
    # central bank nodes ping every 2 s to notice a silent peer (their KEEPALIVE_OPTIONS): accept
    # that, also on idle connections, instead of answering with GOAWAY "too many pings"
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
)


@dataclass(frozen=True, slots=True)
class BridgeNodeSettings:
    db: Path  # the SQLite file, unless `store` names a PostgreSQL database
    genesis: Genesis
    port: int = 0
    host: str = "127.0.0.1"
    pki: Path | None = None  # mutual TLS when set
    max_batch: int = 1000
    block_interval: float = 0.0  # least seconds between two blocks (see Sequencer)
    store: str = ""  # a postgresql:// URL: one of several bridge processes on that database
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # unary calls at once; the excess is shed
    mqtt: MqttSettings | None = None  # publish the outbox to this broker when set


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: list[str]
) -> health.aio.HealthServicer:
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [
        *service_names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
    return health_servicer


def bind(server: grpc.aio.Server, host: str, port: int, pki: Path | None, name: str) -> int:
    address = f"{host}:{port}"
    if pki is None:
        bound: int = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, server_credentials(pki, name))
    return bound


def central_banks_only(settings: BridgeNodeSettings) -> CallerAuthInterceptor:
    """Every BridgeLedger call must come from a central bank node of the genesis (health and
    reflection stay open): its certificate's role with TLS on, its signed call with TLS off."""
    genesis = settings.genesis
    authenticator = CallerAuthenticator(
        central_bank_keys={cb.id: cb.public_key for cb in genesis.central_banks},
        chain_id=genesis.chain_id,
        audience=BRIDGE_AUDIENCE,
        tls=settings.pki is not None,
        verifier=FastVerifier(),
    )
    return CallerAuthInterceptor(authenticator, [SERVICE_NAME])


def export_bridge_gauges(sequencer: Sequencer, feed: ChainFeed) -> None:
    """Queue depth and heights, read at each scrape of the metrics endpoint."""
    gauge("queue_depth", "Instructions waiting for the sequencer.", lambda: sequencer.depth)
    gauge("head_height", "Height of the newest sealed block.", lambda: feed.height)
    gauge("final_height", "Highest final block height.", lambda: feed.final_height)


async def run_bridge_node(
    settings: BridgeNodeSettings,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] = lambda port: None,
) -> None:
    """Serve until `stop` is set; then drain and close cleanly."""
    if is_postgres(settings.store):
        from bridge.node.replicated import run_replicated_bridge_node

        await run_replicated_bridge_node(settings, stop=stop, on_listening=on_listening)
        return
    store = open_store(settings.db)
    engine = fault_hooks.engine_class().open(
        store, settings.genesis, verifier=FastVerifier(), check=SignatureCheck.ENDORSEMENTS
    )
    reader = open_store(settings.db)
    bulk_reader = open_store(settings.db)  # pages of blocks and entries, on a thread of their own
    feed = ChainFeed(reader, settings.genesis.quorum)
    head = store.head()
    clock = MonotonicClock(
        fault_hooks.offset_clock(wall_clock_ms), start=0 if head is None else head.time
    )

    def on_block(block: SealedBlock) -> None:
        feed.block_sealed(block.header.height)
        service.block_sealed(block)

    sequencer = Sequencer(
        engine,
        clock=clock,
        max_batch=settings.max_batch,
        block_interval=settings.block_interval,
        on_block=on_block,
    )
    publisher = None
    # the publisher's cursor is written on the ledger's writer thread like every other write
    # (no lock contention), without an fsync of its own: a cursor lost in a power cut only
    # means messages published again, and the next block's commit syncs it anyway
    cursor_store = SqliteStore(settings.db, synchronous="OFF")
    if settings.mqtt is not None:
        publisher = OutboxPublisher(
            settings.mqtt,
            reader=SqliteStore(settings.db),
            mark=lambda upto: cursor_store.set_outbox_cursor(PUBLISHER, upto),
            feed=feed,
            writer=sequencer.writer,
        )
        sequencer.on_outbox = publisher.block_committed  # each block's events, in memory
    # the in-flight bound outermost: it counts every BridgeLedger call, authenticated or not
    interceptors: list[grpc.aio.ServerInterceptor] = [
        InFlightLimit(settings.max_in_flight),
        central_banks_only(settings),
        RequestGuard(),
    ]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    service = BridgeLedgerService(
        genesis=settings.genesis,
        sequencer=sequencer,
        reader=reader,
        feed=feed,
        ledger=engine.ledger,
        bulk_reader=bulk_reader,
    )
    bridge_ledger_pb2_grpc.add_BridgeLedgerServicer_to_server(service, server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings.host, settings.port, settings.pki, "bridge")
    export_bridge_gauges(sequencer, feed)
    if publisher is not None:
        export_publisher_gauges(lambda: publisher)
    sequencer.start()
    if publisher is not None:
        publisher.start()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "bridge node listening", extra={"port": port, "height": feed.height, "db": str(settings.db)}
    )
    on_listening(port)
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2.0)
        if publisher is not None:
            await publisher.stop()
            publisher.reader.close()
        await sequencer.stop()
        service.close()
        cursor_store.close()
        store.close()
        reader.close()
        bulk_reader.close()
        log.info(
            "bridge node stopped",
            extra={"height": feed.height, "dropped_unsequenced": sequencer.dropped},
        )
