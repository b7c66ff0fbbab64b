"""Signed calls and certificate roles (`bridge.node.caller_auth`) without a server."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.crypto import FastVerifier, PrivateKey
from bridge.errors import Reason, Refused
from bridge.node.caller_auth import (
    FRESHNESS_MS,
    REUSE_MS,
    CallerAuthenticator,
    CallerAuthInterceptor,
    CallerSigner,
    central_bank_of_certificate,
    central_bank_role,
)

METHOD = "/bridge.v1.BridgeLedger/GetGenesis"
NOW = 1_800_000_000_000


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class CountingVerifier(FastVerifier):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        return super().verify(public_key, message, signature)


@pytest.fixture(scope="module")
def pboc() -> PrivateKey:
    return PrivateKey.generate()


def authenticator(
    pboc: PrivateKey, clock: Clock, verifier: FastVerifier | None = None, *, tls: bool = False
) -> CallerAuthenticator:
    return CallerAuthenticator(
        central_bank_keys={"PBOC": pboc.public_key},
        chain_id="test-chain",
        audience="bridge",
        tls=tls,
        verifier=verifier or FastVerifier(),
        clock=clock,
    )


def signer(
    key: PrivateKey, clock: Clock, *, caller: str = "PBOC", chain: str = "test-chain"
) -> CallerSigner:
    return CallerSigner(chain_id=chain, caller=caller, audience="bridge", signer=key, clock=clock)


def refusal(call: object) -> Refused:
    with pytest.raises(Refused) as info:
        call()  # type: ignore[operator]
    return info.value


def test_a_fresh_signed_call_names_its_central_bank(pboc: PrivateKey) -> None:
    """Headers signed with the central bank's key, within the window, authenticate it."""
    clock = Clock()
    headers = signer(pboc, clock).headers(METHOD)
    clock.now += FRESHNESS_MS - 1
    assert authenticator(pboc, clock).of_metadata(headers, METHOD) == "PBOC"


def test_stale_or_misdirected_headers_are_refused(pboc: PrivateKey) -> None:
    """Past the window, for another method, another chain or with another key: refused as
    CALLER_NOT_AUTHENTICATED."""
    clock = Clock()
    auth = authenticator(pboc, clock)
    other_chain = signer(pboc, clock, chain="other-chain").headers(METHOD)
    wrong_key = signer(PrivateKey.generate(), clock).headers(METHOD)
    for headers, method in (
        (other_chain, METHOD),
        (wrong_key, METHOD),
        (signer(pboc, clock).headers(METHOD), "/bridge.v1.BridgeLedger/SubmitOne"),
    ):
        found = refusal(lambda h=headers, m=method: auth.of_metadata(h, m))
        assert found.reason is Reason.CALLER_NOT_AUTHENTICATED
    headers = signer(pboc, clock).headers(METHOD)
    clock.now += FRESHNESS_MS + 1
    assert refusal(lambda: auth.of_metadata(headers, METHOD)).reason is (
        Reason.CALLER_NOT_AUTHENTICATED
    )


def test_a_verified_header_is_not_checked_again_but_still_expires(pboc: PrivateKey) -> None:
    """The callee verifies a header once; reused within its window it costs no P-256 check,
    and past the window it is refused all the same."""
    clock = Clock()
    verifier = CountingVerifier()
    auth = authenticator(pboc, clock, verifier)
    headers = signer(pboc, clock).headers(METHOD)
    for _ in range(5):
        assert auth.of_metadata(headers, METHOD) == "PBOC"
    assert verifier.calls == 1
    clock.now += FRESHNESS_MS + 1
    assert refusal(lambda: auth.of_metadata(headers, METHOD)).reason is (
        Reason.CALLER_NOT_AUTHENTICATED
    )


def test_the_caller_signs_again_after_its_reuse_period(pboc: PrivateKey) -> None:
    """A client reuses one header per method for REUSE_MS, then signs a fresh one."""
    clock = Clock()
    calls = signer(pboc, clock)
    first = calls.headers(METHOD)
    clock.now += REUSE_MS - 1
    assert calls.headers(METHOD) == first
    clock.now += 2
    assert calls.headers(METHOD) != first
    assert REUSE_MS < FRESHNESS_MS


def certificate(uris: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("cbdc-bridge.local"), *map(x509.UniformResourceIdentifier, uris)]
            ),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_certificate_roles(pboc: PrivateKey) -> None:
    """A central bank node's certificate names its central bank; a bank's, or one for a central
    bank outside the genesis, is CALLER_NOT_ALLOWED; none at all, CALLER_NOT_AUTHENTICATED."""
    node = certificate([central_bank_role("PBOC")])
    assert central_bank_of_certificate(node) == "PBOC"
    assert central_bank_of_certificate(certificate([])) is None
    auth = authenticator(pboc, Clock(), tls=True)
    assert auth.of_certificate({"x509_pem_cert": [node]}) == "PBOC"
    for pem in (certificate([]), certificate([central_bank_role("ECB")])):
        found = refusal(lambda p=pem: auth.of_certificate({"x509_pem_cert": [p]}))
        assert found.reason is Reason.CALLER_NOT_ALLOWED
    assert refusal(lambda: auth.of_certificate({})).reason is Reason.CALLER_NOT_AUTHENTICATED


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def test_with_tls_the_checking_handler_is_built_once_per_method(pboc: PrivateKey) -> None:
    """With TLS on, calls of a method reuse one certificate-checking handler, not one each."""

    async def behaviour(request: bytes, context: object) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    guard = CallerAuthInterceptor(
        authenticator(pboc, Clock(), tls=True), ["bridge.v1.BridgeLedger"]
    )
    details = CallDetails(METHOD, ())
    one = await guard.intercept_service(continuation, details)
    again = await guard.intercept_service(continuation, details)
    assert one is again
    assert one is not handler  # it checks the certificate before the behaviour runs
    health = await guard.intercept_service(
        continuation, CallDetails("/grpc.health.v1.Health/Check", ())
    )
    assert health is handler  # unguarded services are left alone
