"""Mutual TLS for every channel: credentials from the network's demo PKI directory.

Layout (made by `cbdc-bridge pki`): ca.pem, and <name>.pem / <name>.key for each node and
bank. Servers require client certificates signed by the CA; clients check the server's.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(pki: Path, name: str) -> grpc.ServerCredentials:
    creds: grpc.ServerCredentials = grpc.ssl_server_credentials(
        [((pki / f"{name}.key").read_bytes(), (pki / f"{name}.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    return creds


def channel_credentials(pki: Path, name: str) -> grpc.ChannelCredentials:
    creds: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{name}.key").read_bytes(),
        certificate_chain=(pki / f"{name}.pem").read_bytes(),
    )
    return creds


# Every certificate is issued for this name (SAN), so clients dial 127.0.0.1 but check it.
TLS_SERVER_NAME = "cbdc-bridge.local"
CHANNEL_OPTIONS_TLS = (("grpc.ssl_target_name_override", TLS_SERVER_NAME),)
