"""Mutual TLS: `cbdc-bridge pki` certifies a network, which then serves TLS only.

The module generates a network (PBOC/CNY with ICBC, HKMA/HKD with HSBCHK), runs the `pki`
command on it, and starts it on free loopback ports: every node serves mutual TLS and dials
its peers with its own certificate. The SDK works over it; a client without a certificate of
the network's CA is refused. The network is always stopped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from bridge._proto.bridge.v1 import bridge_ledger_pb2 as bridge_pb
from bridge._proto.bridge.v1 import bridge_ledger_pb2_grpc as bridge_grpc
from bridge._proto.bridge.v1 import central_bank_pb2 as cb_pb
from bridge._proto.bridge.v1 import central_bank_pb2_grpc as cb_grpc
from bridge._proto.bridge.v1 import types_pb2
from bridge.domain import Outcome
from bridge.errors import Reason
from bridge.node.caller_auth import central_bank_role
from bridge.status import refusal_from_rpc_error
from bridge.tls import CHANNEL_OPTIONS_TLS, TLS_SERVER_NAME, channel_credentials
from participants.central_bank.channels import bridge_channel
from participants.cli import app
from participants.launcher import Network, prepare_network
from participants.network_config import NetworkConfig, TlsConfig
from participants.pki import make_pki, participant_names
from participants.sdk import (
    AsyncBankClient,
    BankClient,
    BridgeRpcError,
    CentralBankAdminClient,
    RetryPolicy,
    Tls,
)

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def tls_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A two-jurisdiction network certified by `cbdc-bridge pki` and started with TLS."""
    directory = tmp_path_factory.mktemp("tls-network")
    prepare_network(directory, central_banks=2, banks_per_central_bank=1)  # writes network.json
    result = CliRunner().invoke(app, ["pki", "--network", str(directory)])
    assert result.exit_code == 0, result.output
    network = prepare_network(directory)  # reloads network.json, now with tls set
    assert network.config.tls is not None
    network.start()
    try:
        for bank in ("ICBC", "HSBCHK"):
            with BankClient.from_network(directory, bank) as client:
                client.wait_ready(timeout=60)
        yield network
    finally:
        network.stop()


def pki_of(network: Network) -> Path:
    return network.directory / "pki"


def certificate(network: Network, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki_of(network) / f"{name}.pem").read_bytes())


def test_pki_certifies_everyone_for_the_server_name_and_loopback(tls_network: Network) -> None:
    """Each certificate is signed by the CA, names cbdc-bridge.local and 127.0.0.1, and
    serves both as server and as client; a central bank node's also carries its role."""
    ca = certificate(tls_network, "ca")
    names = participant_names(tls_network.config)
    assert set(names) == {"bridge", "PBOC", "ICBC", "HKMA", "HSBCHK"}
    for name in names:
        cert = certificate(tls_network, name)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [TLS_SERVER_NAME]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        roles = san.get_values_for_type(x509.UniformResourceIdentifier)
        assert roles == ([central_bank_role(name)] if name in ("PBOC", "HKMA") else [])
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert (pki_of(tls_network) / f"{name}.key").stat().st_mode & 0o077 == 0
    assert NetworkConfig.load(tls_network.directory).tls == TlsConfig()


def test_sdk_pays_and_reads_over_mutual_tls(tls_network: Network) -> None:
    """BankClient.from_network dials with the bank's certificate; payments and reads work."""
    directory = tls_network.directory
    with CentralBankAdminClient.from_network(directory, "PBOC") as pboc:
        assert pboc.issue("ICBC", "CNY", 1_000_000).outcome is Outcome.ISSUED
    with BankClient.from_network(directory, "ICBC") as icbc:
        before = icbc.balance("CNY").available
        paid = icbc.pay("HSBCHK", "CNY", 2_500, reference="over TLS")
        assert paid.settled
        assert icbc.balance("CNY").available == before - 2_500
        assert icbc.wait_final(paid.instruction_id).final
        (entry,) = icbc.history(paid.seq, limit=1)
        assert entry.reference == "over TLS"


def test_dual_pvp_crosses_nodes_over_tls(tls_network: Network) -> None:
    """A dual PvP needs PBOC's node to call HKMA's over TLS for its endorsement; it settles."""
    directory = tls_network.directory
    with CentralBankAdminClient.from_network(directory, "HKMA") as hkma:
        hkma.issue("HSBCHK", "HKD", 1_000_000)
    with (
        BankClient.from_network(directory, "ICBC") as icbc,
        BankClient.from_network(directory, "HSBCHK") as hsbc,
    ):
        offer = hsbc.sign_dual_pvp(
            "ICBC", pay=("HKD", 1_100), receive=("CNY", 1_000), rate="0.909091"
        )
        assert icbc.submit_dual_pvp(offer).settled


async def test_async_client_works_over_tls(tls_network: Network) -> None:
    """AsyncBankClient uses the same certificates from the network directory."""
    async with AsyncBankClient.from_network(tls_network.directory, "ICBC") as icbc:
        balances = await icbc.balances()
    assert "CNY" in balances


def test_client_without_a_certificate_is_refused(tls_network: Network) -> None:
    """Without a client certificate (or without TLS at all) no call gets through."""
    config = tls_network.config
    address = config.central_bank("PBOC").address
    key = config.load_key("ICBC")
    with (
        BankClient(address, "ICBC", key, timeout=3, retry=NO_RETRY) as plain,
        pytest.raises(BridgeRpcError) as info,
    ):
        plain.balances()
    assert info.value.transient
    ca_only = grpc.ssl_channel_credentials((pki_of(tls_network) / "ca.pem").read_bytes())
    with grpc.secure_channel(address, ca_only, options=CHANNEL_OPTIONS_TLS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            health.Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_of_another_ca_is_refused(tls_network: Network, tmp_path: Path) -> None:
    """A client certified by a different CA is refused the handshake."""
    foreign = tmp_path / "foreign"
    config = NetworkConfig(
        "other", 1, 1, tls_network.config.central_banks, directory=foreign, tls=TlsConfig()
    )
    make_pki(config, names=("ICBC",))
    address = tls_network.config.central_bank("PBOC").address
    key = tls_network.config.load_key("ICBC")
    with (
        BankClient(
            address, "ICBC", key, tls=Tls(foreign / "pki", "ICBC"), timeout=3, retry=NO_RETRY
        ) as stranger,
        pytest.raises(BridgeRpcError) as info,
    ):
        stranger.balances()
    assert info.value.transient


def test_pki_rerun_keeps_the_ca_and_certifies_only_new_names(tls_network: Network) -> None:
    """Running pki again keeps the CA and existing certificates; --name adds one."""
    ca_before = (pki_of(tls_network) / "ca.pem").read_bytes()
    icbc_before = (pki_of(tls_network) / "ICBC.pem").read_bytes()
    issued = make_pki(NetworkConfig.load(tls_network.directory), names=("CQRCB",))
    assert not issued.ca_created
    assert issued.names == ("CQRCB",)
    assert (pki_of(tls_network) / "ca.pem").read_bytes() == ca_before
    assert (pki_of(tls_network) / "ICBC.pem").read_bytes() == icbc_before
    certificate(tls_network, "CQRCB").verify_directly_issued_by(certificate(tls_network, "ca"))


def tls_channel(network: Network, address: str, name: str) -> grpc.Channel:
    """A mutual-TLS channel presenting `name`'s certificate of the network's CA."""
    credentials = channel_credentials(pki_of(network), name)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS_TLS)


def reads_and_writes(stub: bridge_grpc.BridgeLedgerStub) -> list[Callable[[], object]]:
    """A read, a stream and a write of the bridge, each to be refused."""
    return [
        lambda: stub.GetBalances(bridge_pb.GetBalancesRequest(participant="ICBC"), timeout=10),
        lambda: stub.GetGenesis(bridge_pb.GetGenesisRequest(), timeout=10),
        lambda: next(stub.StreamBlocks(bridge_pb.StreamBlocksRequest(), timeout=10)),
        lambda: stub.SubmitOne(types_pb2.SignedInstruction(), timeout=10),
    ]


def test_the_bridge_answers_central_bank_certificates_only(tls_network: Network) -> None:
    """Over mutual TLS a bank's (or the bridge's own) certificate calling the bridge is
    PERMISSION_DENIED / CALLER_NOT_ALLOWED, reads and writes alike; a central bank node's works."""
    config = tls_network.config
    for name in ("ICBC", "HSBCHK", "bridge"):
        with tls_channel(tls_network, config.bridge_address, name) as channel:
            calls = reads_and_writes(bridge_grpc.BridgeLedgerStub(channel))
            for call in calls:
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
                assert refusal_from_rpc_error(refused.value).reason is Reason.CALLER_NOT_ALLOWED
    with bridge_channel(config, "HKMA") as channel:
        stub = bridge_grpc.BridgeLedgerStub(channel)
        genesis = stub.GetGenesis(bridge_pb.GetGenesisRequest(), timeout=10)
        assert bytes(genesis.hash) == config.genesis().hash()
        balances = stub.GetBalances(bridge_pb.GetBalancesRequest(participant="ICBC"), timeout=10)
        assert all(account.participant == "ICBC" for account in balances.accounts)


def test_endorse_dual_pvp_refuses_a_bank_certificate(tls_network: Network) -> None:
    """A bank's certificate asking HKMA's node for an endorsement is PERMISSION_DENIED."""
    address = tls_network.config.central_bank("HKMA").address
    with tls_channel(tls_network, address, "ICBC") as channel:
        node = cb_grpc.CentralBankStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            node.EndorseDualPvps(cb_pb.EndorseDualPvpsRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert refusal_from_rpc_error(refused.value).reason is Reason.CALLER_NOT_ALLOWED


def test_the_admin_listener_needs_mutual_tls_and_the_token(tls_network: Network) -> None:
    """The operators' listener takes mutual TLS only, and even then wants the admin token."""
    address = tls_network.config.central_bank("PBOC").admin_address
    ca_only = grpc.ssl_channel_credentials((pki_of(tls_network) / "ca.pem").read_bytes())
    with (
        grpc.secure_channel(address, ca_only, options=CHANNEL_OPTIONS_TLS) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        cb_grpc.CentralBankAdminStub(channel).ListBanks(cb_pb.ListBanksRequest(), timeout=3)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with tls_channel(tls_network, address, "PBOC") as channel:
        admin = cb_grpc.CentralBankAdminStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            admin.ListBanks(cb_pb.ListBanksRequest(), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        token = (tls_network.directory / "keys" / "PBOC.admin-token").read_text().strip()
        listed = admin.ListBanks(
            cb_pb.ListBanksRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
    assert [p.id for p in listed.participants] == ["ICBC"]
