"""Running a central bank node: serve its banks, follow and attest the bridge's blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bridge import wire
from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2, central_bank_pb2_grpc
from bridge.core.ledger import SignatureCheck
from bridge.crypto import FastVerifier, public_key_from_pem
from bridge.domain import AdmitBank
from bridge.errors import BridgeError, Refused, StoreError
from bridge.metrics import gauge
from bridge.node.caller_auth import BRIDGE_AUDIENCE, CallerAuthenticator
from bridge.node.episodes import FailureEpisode
from bridge.node.request_guard import RequestGuard
from bridge.node.server import SERVER_OPTIONS, add_health_and_reflection, bind
from bridge.node.shedding import DEFAULT_MAX_IN_FLIGHT, InFlightLimit
from participants.central_bank.bridge_link import BridgeLink, Endorser
from participants.central_bank.channels import node_channel
from participants.central_bank.checkpoint import ReplicaCheckpoint
from participants.central_bank.reachability import Reachability
from participants.central_bank.refusals import NodeRefusals
from participants.central_bank.replica import Replica
from participants.central_bank.service import (
    BRIDGE_DEADLINE,
    DEFAULT_MAX_STREAM_INSTRUCTIONS,
    CentralBankAdminService,
    CentralBankCore,
    CentralBankService,
    NodeStreamLoad,
    now_ms,
)
from participants.network_config import NetworkConfig

log = logging.getLogger("participants.central_bank")
BANK_SERVICE = central_bank_pb2.DESCRIPTOR.services_by_name["CentralBank"].full_name
ADMIN_SERVICE = central_bank_pb2.DESCRIPTOR.services_by_name["CentralBankAdmin"].full_name
ATTEST_INTERVAL_SECONDS = 0.05  # the default least time between two attestations
ATTEST_RETRY_SECONDS = 0.5  # after an attestation the bridge did not take


@dataclass(frozen=True, slots=True)
class CentralBankNodeSettings:
    network: Path
    central_bank: str
    port: int | None = None  # default: the port in network.json
    admin_port: int | None = None  # default: the admin port in network.json
    replica_check: SignatureCheck = SignatureCheck.ENDORSEMENTS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # unary calls at once; the excess is shed
    # instructions in flight over all SubmitStream calls together; the excess is shed
    max_stream_instructions: int = DEFAULT_MAX_STREAM_INSTRUCTIONS
    attest_interval: float = ATTEST_INTERVAL_SECONDS  # least seconds between two attestations
    checkpoint: bool = True  # keep the replica's checkpoint (restarts replay only the tail)


def admin_token(config: NetworkConfig, central_bank: str) -> str:
    return (config.directory / "keys" / f"{central_bank}.admin-token").read_text().strip()


async def run_central_bank_node(
    settings: CentralBankNodeSettings,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] = lambda port: None,
) -> None:
    config = NetworkConfig.load(settings.network)
    me = config.central_bank(settings.central_bank)
    key = config.load_key(me.id)
    genesis = config.genesis()
    # reads go to any bridge process (the channel fails over between the addresses itself);
    # instructions go to the one that leads (BridgeLink fails over when one does not take them)
    addresses = config.bridge_addresses
    target = addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)
    bridge_channel = node_channel(config, target, me.id, audience=BRIDGE_AUDIENCE, key=key)
    bridge = bridge_grpc.BridgeLedgerStub(bridge_channel)
    link_channels = (
        [bridge_channel]
        if len(addresses) == 1
        else [
            node_channel(config, address, me.id, audience=BRIDGE_AUDIENCE, key=key)
            for address in addresses
        ]
    )
    peer_channels = {
        cb.id: node_channel(config, cb.address, me.id, audience=cb.id, key=key)
        for cb in config.central_banks
        if cb.id != me.id
    }
    peers = {cb: central_bank_pb2_grpc.CentralBankStub(ch) for cb, ch in peer_channels.items()}
    replica = Replica(
        genesis,
        central_bank=me.id,
        signer=key,
        verifier=None if settings.replica_check is SignatureCheck.NONE else FastVerifier(),
        check=settings.replica_check,
        checkpoint=(
            ReplicaCheckpoint(config.replica_checkpoint_path(me.id))
            if settings.checkpoint
            else None
        ),
    )
    await asyncio.to_thread(replica.restore)
    link = BridgeLink(
        *(bridge_grpc.BridgeLedgerStub(c) for c in link_channels),
        reachability=Reachability("bridge"),
        endorser=Endorser(me.id, key),
    )
    refusals = NodeRefusals(
        config.refusals_path(me.id), central_bank=me.id, chain_id=genesis.chain_id
    )
    core = CentralBankCore(
        config=config,
        central_bank=me.id,
        key=key,
        bridge=bridge,
        link=link,
        replica=replica,
        peers=peers,
        refusals=refusals,
    )
    pki = None if config.tls is None else config.directory / config.tls.directory
    peers_auth = CallerAuthenticator(
        central_bank_keys={cb.id: cb.public_key for cb in genesis.central_banks if cb.id != me.id},
        chain_id=genesis.chain_id,
        audience=me.id,
        tls=pki is not None,
        verifier=core.verifier,
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [
        InFlightLimit(settings.max_in_flight),
        RequestGuard(on_refused=core.refused_at_edge),
    ]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    central_bank_pb2_grpc.add_CentralBankServicer_to_server(
        CentralBankService(
            core,
            peers=peers_auth,
            stream_load=NodeStreamLoad(settings.max_stream_instructions),
        ),
        server,
    )
    health_servicer = add_health_and_reflection(server, [BANK_SERVICE])
    port = bind(
        server, "127.0.0.1", me.port if settings.port is None else settings.port, pki, me.id
    )
    # the operators' desk listens apart from the banks (loopback by default): token, and
    # mutual TLS with a certificate of the network's CA when TLS is on
    admin_server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RequestGuard()])
    central_bank_pb2_grpc.add_CentralBankAdminServicer_to_server(
        CentralBankAdminService(core, admin_token(config, me.id)), admin_server
    )
    admin_health = add_health_and_reflection(admin_server, [ADMIN_SERVICE])
    admin_port = bind(
        admin_server,
        me.admin_host,
        me.admin_port if settings.admin_port is None else settings.admin_port,
        pki,
        me.id,
    )
    gauge("replica_height", "Height of the newest block replayed.", lambda: replica.height)
    known = replica.known
    gauge(
        "replay_known_bodies",
        "Entries replayed with the body this node decoded at its edge (not decoded again).",
        lambda: known.hits,
    )
    gauge("replay_known_bodies_held", "Decoded bodies held for the replay.", lambda: len(known))
    await server.start()
    await admin_server.start()
    tasks = [
        asyncio.create_task(follow_blocks(core), name="follow-blocks"),
        asyncio.create_task(attest_heights(core, settings.attest_interval), name="attest"),
        asyncio.create_task(admit_configured_banks(core), name="admit-banks"),
        asyncio.create_task(refusals.run(), name="record-refusals"),
    ]
    for servicer, name in ((health_servicer, BANK_SERVICE), (admin_health, ADMIN_SERVICE)):
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "central bank node listening",
        extra={"central_bank": me.id, "port": port, "admin_port": admin_port},
    )
    on_listening(port)
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await admin_health.enter_graceful_shutdown()
        await admin_server.stop(grace=2.0)
        await server.stop(grace=2.0)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await replica.save_checkpoint()  # a restart then replays nothing it replayed here
            await refusals.flush()  # the refusals answered before the stop
        finally:
            if replica.checkpoint is not None:
                replica.checkpoint.close()
            refusals.close()
        await link.close()
        await core.close_endorsers()
        for channel in {bridge_channel, *link_channels}:
            await channel.close()
        for channel in peer_channels.values():
            await channel.close()
        log.info(
            "central bank node stopped",
            extra={
                "central_bank": me.id,
                "height": replica.height,
                "replayed": replica.replayed_blocks,  # blocks replayed since the start
            },
        )


async def check_genesis(core: CentralBankCore) -> None:
    remote = await core.bridge.GetGenesis(bridge_pb.GetGenesisRequest(), timeout=BRIDGE_DEADLINE)
    if bytes(remote.hash) != core.replica.ledger.genesis.hash():
        raise BridgeError("the bridge runs a different genesis than network.json describes")


async def learn_bridge_height(core: CentralBankCore) -> None:
    """Ask the bridge how far its log is sealed: the replica is catching up until there."""
    finality = await core.bridge.GetFinality(
        bridge_pb.GetFinalityRequest(), timeout=BRIDGE_DEADLINE
    )
    core.replica.bridge_sealed(finality.sealed_height)
    if core.replica.catching_up:
        log.info(
            "catching up with the bridge's log",
            extra={"height": core.replica.height, "bridge_height": finality.sealed_height},
        )


async def verify_checkpoint(core: CentralBankCore) -> None:
    """Check a restored checkpoint against the bridge's block at its height; on any
    difference (another block there, or none: the bridge's log is shorter) start over."""
    replica = core.replica
    if not replica.unverified_checkpoint:
        return
    height = replica.height
    why = ""
    if replica.bridge_height is not None and replica.bridge_height < height:
        why = f"the bridge's log is sealed to height {replica.bridge_height}, below {height}"
    else:
        response = await core.bridge.GetBlocks(
            bridge_pb.GetBlocksRequest(from_height=height, to_height=height),
            timeout=BRIDGE_DEADLINE,
        )
        blocks = [b for b in response.blocks if b.header.height == height]
        if not blocks:
            why = f"the bridge has no block at height {height}"
        elif wire.header_from_proto(blocks[0].header).hash() != replica.head_hash:
            why = f"the bridge's block at height {height} has another hash"
    if why:
        replica.reset(why)
        await learn_bridge_height(core)
    else:
        replica.checkpoint_verified()


def replay_delay() -> float:
    """Seconds to wait per block replayed while catching up: 0, except when a test slows
    the replay down (CBDC_BRIDGE_TEST_REPLAY_DELAY_MS) to observe the catching-up window."""
    return float(os.environ.get("CBDC_BRIDGE_TEST_REPLAY_DELAY_MS", "0")) / 1000


async def follow_blocks(core: CentralBankCore) -> None:
    """Replay every block, reconnecting whenever the bridge goes away (`attest_heights` signs)."""
    replica = core.replica
    bridge = core.link.reachability  # outages are logged once there, not once per retry
    delay = replay_delay()
    last_failure = ""
    while True:
        try:
            started = time.monotonic()
            await check_genesis(core)
            bridge.succeeded(started)
            await learn_bridge_height(core)
            await verify_checkpoint(core)
            request = bridge_pb.StreamBlocksRequest(from_height=replica.height + 1)
            async for block in core.bridge.StreamBlocks(request):
                behind = replica.catching_up
                if delay and behind:
                    await asyncio.sleep(delay)
                header = wire.header_from_proto(block.header)
                replica.apply_block(header, [bytes(e.canonical) for e in block.entries])
                if behind and not replica.catching_up:
                    log.info(
                        "caught up with the bridge's log",
                        extra={"height": replica.height, "replayed": replica.replayed_blocks},
                    )
                if replica.checkpoint_due():
                    await replica.save_checkpoint()
        except grpc.aio.AioRpcError as error:
            if not bridge.failed(error):
                log.info(
                    "waiting for the bridge",
                    extra={"code": error.code().name, "height": replica.height},
                )
            await asyncio.sleep(0.5)
        except StoreError as error:  # the replica's checkpoint file: the block is replayed again
            if str(error) != last_failure:
                last_failure = str(error)
                log.error("replica checkpoint unreadable; retrying", extra={"error": str(error)})
            await asyncio.sleep(1.0)
        except BridgeError as error:
            if str(error) != last_failure:  # once per failure, not every retry
                last_failure = str(error)
                log.error("block failed verification; not attesting", extra={"error": str(error)})
            await asyncio.sleep(5.0)


async def attest_heights(core: CentralBankCore, interval: float) -> None:
    """Attest the newest replayed height, at most every `interval` seconds, until cancelled.

    One attestation of height h covers the chain up to h (each header commits to the one
    before), and h is final once a quorum attested h or a later height: so under load one
    signature and one message cover many blocks, and an attestation the bridge did not take
    (it was down, slow or shedding) needs no resending of its own: the same or a newer head is
    sent again. The attestations go over one `AttestStream` call, opened again whenever it
    breaks: one message each way per attestation, where a unary call each cost both ends
    several times as much (docs/performance.md).
    """
    replica = core.replica
    bridge = core.link.reachability
    attested = 0  # the highest height the bridge took from this node
    call: Any = None
    # the bridge answering that it cannot store attestations: logged once per episode
    storing = FailureEpisode(log, "attestations stored by the bridge")
    try:
        while True:
            await replica.wait_beyond(attested)
            attestation = replica.attest_head()
            if attestation is None:  # pragma: no cover - wait_beyond(0): a block was replayed
                continue
            started = time.monotonic()
            try:
                if call is None:
                    call = core.bridge.AttestStream()
                await call.write(wire.attestation_to_proto(attestation))
                answer = await asyncio.wait_for(call.read(), BRIDGE_DEADLINE)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as error:
                call.cancel()
                call = None
                if isinstance(error, grpc.aio.AioRpcError):
                    stream_failed(bridge, error, attestation.height)
                await asyncio.sleep(max(interval, ATTEST_RETRY_SECONDS))
                continue
            if answer is grpc.aio.EOF:  # the bridge ended the stream: open another
                call = None
                await asyncio.sleep(max(interval, ATTEST_RETRY_SECONDS))
                continue
            bridge.succeeded(started)
            if answer.HasField("refusal"):
                code = answer.refusal.code
                if code == grpc.StatusCode.UNAVAILABLE.name:
                    # not stored (the store failing, this bridge process stepping down): try
                    # on a new call, which may reach the process leading now; logged once
                    call.cancel()
                    call = None
                    storing.failed(wire.refusal_from_proto(answer.refusal))
                elif code != grpc.StatusCode.RESOURCE_EXHAUSTED.name:
                    # shedding is logged once by the bridge itself
                    log.warning(
                        "attestation not accepted",
                        extra={"height": attestation.height, "code": code},
                    )
                await asyncio.sleep(max(interval, ATTEST_RETRY_SECONDS))
                continue
            storing.succeeded()
            attested = attestation.height
            await asyncio.sleep(interval)
    finally:
        if call is not None:
            call.cancel()


def stream_failed(bridge: Reachability, error: grpc.aio.AioRpcError, height: int) -> None:
    """Log a broken attestation stream: an outage once (bridge unreachable), shedding never
    (the bridge logs it), anything else as an attestation not accepted."""
    shed = error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    if not bridge.failed(error) and not shed:
        log.warning("attestation not accepted", extra={"height": height, "code": error.code().name})


async def admit_configured_banks(core: CentralBankCore) -> None:
    """Register this central bank's configured banks on the bridge (once; restarts skip them)."""
    for bank in core.config.central_bank(core.id).banks:
        while True:
            try:
                if await core.public_key_of(bank.id) is None:
                    key_file = core.config.key_path(bank.id).with_suffix(".pub.pem")
                    body = AdmitBank(
                        f"admit-{bank.id}",
                        core.id,
                        now_ms() + 600_000,
                        bank.id,
                        public_key_from_pem(key_file.read_bytes()),
                        signed_at=now_ms(),
                    )
                    await core.sign_and_settle(body)
                    log.info("bank admitted", extra={"bank": bank.id})
                break
            except Refused as refusal:
                log.info(
                    "admission pending", extra={"bank": bank.id, "reason": refusal.reason.value}
                )
                await asyncio.sleep(0.5)
