"""CPU per peer endorsement: the unary `EndorseDualPvps` call against a message on the open
`EndorseStream`, between real central bank nodes.

Starts a two-central-bank network in a temporary directory; this process then acts as PBOC's
node (a `PeerEndorser` over PBOC's signed channel) and asks HKMA's node for one leg at a time,
as `bench e2e` does at its rates, in four blocks of N: stream, unary, unary, stream. For each
block it prints HKMA's process CPU (`CpuMeter`) and this process's CPU per endorsement (on the
event loop the nodes run on, `bridge.event_loop`): both blocks of a transport include the same
checks and signatures, so their difference is the transport's.

    .venv/bin/python scripts/endorse_cost.py [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bridge import event_loop
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge.domain import DualPvp, Envelope
from bridge.signing import sign_as_party
from loadtest.benchkit import CpuMeter
from participants.central_bank.channels import node_channel
from participants.central_bank.peer_endorser import PeerEndorser
from participants.launcher import Network, prepare_network
from participants.network_config import NetworkConfig

Leg = tuple[Envelope, str]


def legs(config: NetworkConfig, count: int, tag: str) -> list[Leg]:
    """ICBC/HSBCHK dual PvPs signed by both banks, ICBC's leg for PBOC's node to endorse."""
    now = int(time.time() * 1000)
    keys = {party: config.load_key(party) for party in ("ICBC", "HSBCHK")}
    out: list[Leg] = []
    for i in range(count):
        body = DualPvp(
            f"cost-{tag}-{i}", "ICBC", now + 600_000, "HSBCHK", "CNY", 100 + i, "HKD",
            200 + 2 * i, "2", "endorsement cost", signed_at=now,
        )  # fmt: skip
        envelope = Envelope.of(body)
        for party in ("ICBC", "HSBCHK"):
            envelope = sign_as_party(envelope, party, keys[party])
        out.append((envelope, "ICBC"))
    return out


async def block(endorser: PeerEndorser, pid: int, batch: list[Leg]) -> dict[str, object]:
    """Endorse `batch` one leg at a time (the first as a warm-up, once the node endorses:
    the banks admitted, the channel ready); the costs per leg."""
    deadline = time.monotonic() + 60
    while not isinstance((await endorser.endorse_many(batch[:1]))[0], tuple):
        if time.monotonic() > deadline:  # the banks not admitted yet, or the stream not open
            raise SystemExit("HKMA's node does not endorse")
        await asyncio.sleep(0.5)
    client, wall = time.process_time(), time.monotonic()
    with CpuMeter({"server": pid}) as server:
        for leg in batch[1:]:
            (result,) = await endorser.endorse_many([leg])
            if not isinstance(result, tuple):
                raise SystemExit(f"not endorsed: {result}")
    count = len(batch) - 1
    return {
        "transport": "stream" if endorser.stream else "unary",
        "endorsements": count,
        "server_us": round(server.seconds["server"] / count * 1e6),
        "client_us": round((time.process_time() - client) / count * 1e6),
        "wall_us": round((time.monotonic() - wall) / count * 1e6),
    }


async def measure(network: Network, count: int) -> None:
    config = network.config
    process = network.central_banks["HKMA"].process
    assert process is not None
    key = config.load_key("PBOC")
    address = config.central_bank("HKMA").address
    channel = node_channel(config, address, "PBOC", audience="HKMA", key=key)
    endorser = PeerEndorser(cb_grpc.CentralBankStub(channel), "PBOC", key, timeout=10.0)
    try:
        for index, stream in enumerate((True, False, False, True)):
            endorser.stream = stream
            print(
                json.dumps(await block(endorser, process.pid, legs(config, count + 1, f"{index}")))
            )
    finally:
        await endorser.close()
        await channel.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with (
        tempfile.TemporaryDirectory() as directory,
        prepare_network(Path(directory), central_banks=2, mqtt=False) as network,
    ):
        event_loop.run(measure(network, count))  # the loop a node runs on


if __name__ == "__main__":
    main()
