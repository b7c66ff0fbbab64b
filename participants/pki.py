"""`cbdc-bridge pki`: a demo certificate authority and mutual-TLS certificates for a network.

Writes into NETWORK/pki/: ca.pem and ca.key (the CA, kept to certify participants added
later), and <name>.pem / <name>.key for the bridge, every central bank and every bank in
network.json. Every certificate names `bridge.tls.TLS_SERVER_NAME` and 127.0.0.1 and may
serve as both server and client, which is what `bridge.tls` expects; then `tls` is set in
network.json so nodes serve, and clients dial, with mutual TLS. A central bank node's
certificate also carries its role, the SAN URI `urn:cbdc-bridge:central-bank:<ID>`: the bridge
and the peer nodes answer only callers whose certificate has it
(`bridge.node.caller_auth`). Certificates made before roles existed lack it: `pki --force`.

This is a demo PKI: P-256 keys, one self-signed root, no revocation. Never use it outside a
test or demo network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.node.caller_auth import central_bank_role
from bridge.tls import TLS_SERVER_NAME
from participants.network_config import NetworkConfig, TlsConfig

__all__ = ["Issued", "make_pki", "pki_command"]

BRIDGE_NAME = "bridge"  # the bridge node's certificate (bridge.node.server binds with it)
CA_NAME = "ca"
ORGANIZATION = "cbdc-bridge demo"
VALIDITY = dt.timedelta(days=365)
CLOCK_SKEW = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Issued:
    """What `make_pki` wrote: the CA (new or reused) and each certificate issued."""

    directory: Path
    ca_created: bool
    names: tuple[str, ...]


def participant_names(config: NetworkConfig) -> tuple[str, ...]:
    """Everyone who needs a certificate: the bridge, each central bank, each bank."""
    names = [BRIDGE_NAME]
    for cb in config.central_banks:
        names.append(cb.id)
        names.extend(bank.id for bank in cb.banks)
    return tuple(names)


def make_pki(config: NetworkConfig, *, names: tuple[str, ...] = (), force: bool = False) -> Issued:
    """Make (or reuse) the CA and certify `names` (default: everyone in network.json) that
    have no certificate yet; with a new CA (first run or `force`) certify everyone again.
    Then turn TLS on in network.json."""
    tls = config.tls or TlsConfig()
    directory = config.directory / tls.directory
    directory.mkdir(parents=True, exist_ok=True)
    ca_key_path, ca_cert_path = directory / f"{CA_NAME}.key", directory / f"{CA_NAME}.pem"
    ca_created = force or not (ca_key_path.exists() and ca_cert_path.exists())
    if ca_created:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write_key(ca_key_path, ca_key)
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} does not hold an elliptic-curve key")
        ca_key, ca_cert = loaded, x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    everyone = participant_names(config)
    central_banks = {cb.id for cb in config.central_banks}
    wanted = (*everyone, *(n for n in names if n not in everyone)) if ca_created else names
    issued = []
    for name in wanted or everyone:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        if not ca_created and cert_path.exists() and key_path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key_path, key)
        role = central_bank_role(name) if name in central_banks else None
        cert = _leaf_certificate(name, key.public_key(), ca_key, ca_cert, role)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.append(name)
    replace(config, tls=tls).save()
    return Issued(directory, ca_created, tuple(issued))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALIDITY)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    subject = _name(f"{ORGANIZATION} CA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _validity(builder).sign(key, hashes.SHA256())


def _leaf_certificate(
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    role: str | None = None,
) -> x509.Certificate:
    """A server-and-client certificate for `name`; `role` (a URI) is added to its SAN."""
    alternative_names: list[x509.GeneralName] = [
        x509.DNSName(TLS_SERVER_NAME),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    if role is not None:
        alternative_names.append(x509.UniformResourceIdentifier(role))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _validity(builder).sign(ca_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(pem)


def pki_command(
    network: Path = typer.Option(
        Path("demo-network"), "--network", "-n", help="Network directory (network.json)."
    ),
    name: list[str] = typer.Option(
        [], "--name", help="Certify only these names (e.g. a bank admitted later); repeatable."
    ),
    force: bool = typer.Option(False, "--force", help="New CA and certificates for everyone."),
) -> None:
    """Make a demo CA and mutual-TLS certificates for the network, and turn TLS on."""
    try:
        config = NetworkConfig.load(network)
        issued = make_pki(config, names=tuple(name), force=force)
    except (OSError, ValueError, KeyError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    ca = "made a new CA" if issued.ca_created else "kept the existing CA"
    typer.echo(f"{issued.directory}: {ca}; certified {', '.join(issued.names) or 'nobody new'}")
    typer.echo(f"TLS is on in {network / 'network.json'}; restart the network to use it")
