"""Running one of several bridge processes that share a PostgreSQL database.

The same gRPC service as the single-process node (`bridge.node.server`); what differs is who
writes. The process starts as a standby serving reads, and sequences only while it holds
leadership (`bridge.node.leadership`). Any number of these processes can run; losing one,
the leader included, loses no acknowledged settlement and stops settlement only until another
takes the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc
from bridge.log.blocks import SealedBlock
from bridge.node.feed import ChainFeed
from bridge.node.leadership import (
    SequencerOptions,
    Standby,
    follow_database,
    lead_when_possible,
)
from bridge.node.publisher import PublishWhileLeading
from bridge.node.publisher import export_gauges as export_publisher_gauges
from bridge.node.request_guard import RequestGuard
from bridge.node.sequencer import Sequencer
from bridge.node.server import (
    SERVER_OPTIONS,
    SERVICE_NAME,
    BridgeNodeSettings,
    add_health_and_reflection,
    bind,
    central_banks_only,
)
from bridge.node.service import BridgeLedgerService
from bridge.node.shedding import InFlightLimit
from bridge.store.postgres import PostgresStore

log = logging.getLogger("bridge.node")


async def run_replicated_bridge_node(
    settings: BridgeNodeSettings,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] = lambda port: None,
) -> None:
    """Serve until `stop` is set, sequencing whenever this process leads."""
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, PostgresStore, settings.store)
    reader = await loop.run_in_executor(None, PostgresStore, settings.store)
    feed = ChainFeed(reader, settings.genesis.quorum)
    standby = Standby(reader)
    service = BridgeLedgerService(
        genesis=settings.genesis, sequencer=standby, reader=reader, feed=feed, ledger=None
    )

    outbox = await loop.run_in_executor(None, PostgresStore, settings.store)
    publishing = PublishWhileLeading(settings.mqtt, outbox, feed)  # MQTT, while leading
    if settings.mqtt is not None:
        export_publisher_gauges(lambda: publishing.publisher)

    def install(sequencer: Sequencer | None) -> None:
        service.sequencer = standby if sequencer is None else sequencer
        service.ledger = None if sequencer is None else sequencer.engine.ledger
        publishing.install(sequencer)

    def on_block(block: SealedBlock) -> None:
        feed.block_sealed(block.header.height)
        service.block_sealed(block)  # the publisher is handed the block by the sequencer

    interceptors: list[grpc.aio.ServerInterceptor] = [
        InFlightLimit(settings.max_in_flight),
        central_banks_only(settings),
        RequestGuard(),
    ]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    bridge_ledger_pb2_grpc.add_BridgeLedgerServicer_to_server(service, server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings.host, settings.port, settings.pki, "bridge")
    tasks = [
        asyncio.create_task(
            lead_when_possible(
                url=settings.store,
                store=store,
                genesis=settings.genesis,
                options=SequencerOptions(settings.max_batch, settings.block_interval),
                install=install,
                on_block=on_block,
            ),
            name="leadership",
        ),
        asyncio.create_task(follow_database(reader, feed), name="follow-database"),
    ]
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "bridge node listening",
        extra={"port": port, "height": feed.height, "store": store.description},
    )
    on_listening(port)
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2.0)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await publishing.stop()
        standby.close()
        service.close()
        store.close()
        reader.close()
        outbox.close()
        log.info("bridge node stopped", extra={"height": feed.height})
