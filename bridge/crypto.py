"""ECDSA P-256 / SHA-256 keys, signing and verification.

Wire formats, shared by both implementations:
- public key: SEC1 uncompressed point, 65 bytes (0x04 || X || Y);
- signature: fixed-length raw r || s, 64 bytes, big-endian;
- key files: PEM (PKCS#8 private keys, SubjectPublicKeyInfo public keys).

`cryptography` (OpenSSL) is the fast path on the hot path; `ecdsa` (pure Python) is the
portable reference. Each accepts the other's signatures (tests/unit/test_crypto.py).
What is signed is defined in `bridge.domain` (domain tag + canonical body).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import ecdsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from bridge.metrics import stage

PUBLIC_KEY_LENGTH = 65
SIGNATURE_LENGTH = 64
_CURVE = ec.SECP256R1()
_ALGORITHM = ec.ECDSA(hashes.SHA256())
_SIGN = stage("sign", thread_cpu=True)  # one per batch or attestation: each one timed
_VERIFY = stage("verify")


class Signer(Protocol):
    """Anything that signs messages with one P-256 key."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a raw r||s signature of a message against a SEC1 public key."""

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool: ...


class PrivateKey:
    """A P-256 private key (fast path). Signs with a random nonce, as OpenSSL does."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"expected a P-256 key, got curve {key.curve.name}")
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ec.generate_private_key(_CURVE))

    @classmethod
    def from_pem(cls, pem: bytes) -> PrivateKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("PEM does not hold an elliptic-curve private key")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> PrivateKey:
        return cls.from_pem(path.read_bytes())

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_pem())
        path.chmod(0o600)
        path.with_suffix(".pub.pem").write_bytes(public_key_to_pem(self._public))

    @property
    def public_key(self) -> bytes:
        return self._public

    def private_scalar(self) -> int:
        return self._key.private_numbers().private_value

    def sign(self, message: bytes) -> bytes:
        with _SIGN.timed():
            der = self._key.sign(message, _ALGORITHM)
            r, s = decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class ReferenceSigner:
    """A P-256 private key held by the pure-Python `ecdsa` package (RFC 6979 nonces)."""

    def __init__(self, key: ecdsa.SigningKey) -> None:
        self._key = key
        self._public: bytes = b"\x04" + bytes(key.get_verifying_key().to_string())

    @classmethod
    def from_pem(cls, pem: bytes) -> ReferenceSigner:
        return cls(ecdsa.SigningKey.from_pem(pem, hashfunc=hashlib.sha256))

    @classmethod
    def from_scalar(cls, secret: int) -> ReferenceSigner:
        return cls(ecdsa.SigningKey.from_secret_exponent(secret, ecdsa.NIST256p, hashlib.sha256))

    def to_pem(self) -> bytes:
        # `ecdsa` labels its PKCS#8 as version 1 (RFC 5958) yet omits the top-level public
        # key, and `cryptography` >= 45 refuses that; write version 0 (RFC 5208) instead.
        body, _ = ecdsa.der.remove_sequence(self._key.to_der(format="pkcs8"))
        _, rest = ecdsa.der.remove_integer(body)
        pem: bytes = ecdsa.der.topem(
            ecdsa.der.encode_sequence(ecdsa.der.encode_integer(0), rest), "PRIVATE KEY"
        )
        return pem

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        signature: bytes = self._key.sign_deterministic(
            message, hashfunc=hashlib.sha256, sigencode=ecdsa.util.sigencode_string
        )
        return signature


class FastVerifier:
    """OpenSSL verification; parsed public keys are cached (they are few and reused)."""

    def __init__(self) -> None:
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def _key(self, public_key: bytes) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(public_key)
        if key is None:
            if len(public_key) != PUBLIC_KEY_LENGTH:
                return None
            try:
                key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, public_key)
            except ValueError:
                return None
            self._keys[public_key] = key
        return key

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_LENGTH:
            return False
        key = self._key(public_key)
        if key is None:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if r == 0 or s == 0:
            return False
        with _VERIFY.timed():
            try:
                key.verify(encode_dss_signature(r, s), message, _ALGORITHM)
            except InvalidSignature:
                return False
            return True


class ReferenceVerifier:
    """Pure-Python verification with the `ecdsa` package."""

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_LENGTH or len(public_key) != PUBLIC_KEY_LENGTH:
            return False
        try:
            key = ecdsa.VerifyingKey.from_string(public_key, curve=ecdsa.NIST256p)
            return bool(
                key.verify(
                    signature,
                    message,
                    hashfunc=hashlib.sha256,
                    sigdecode=ecdsa.util.sigdecode_string,
                )
            )
        except (ecdsa.BadSignatureError, ecdsa.MalformedPointError, ValueError, AssertionError):
            return False


def public_key_to_pem(public_key: bytes) -> bytes:
    key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, public_key)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_pem(pem: bytes) -> bytes:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("PEM does not hold a P-256 public key")
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
