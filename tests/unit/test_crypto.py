"""The fast (`cryptography`) and reference (`ecdsa`) P-256 implementations agree."""

from __future__ import annotations

import stat
import subprocess
from hashlib import sha256
from pathlib import Path

import ecdsa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bridge.crypto import (
    PUBLIC_KEY_LENGTH,
    SIGNATURE_LENGTH,
    FastVerifier,
    PrivateKey,
    ReferenceSigner,
    ReferenceVerifier,
    Signer,
    Verifier,
    public_key_from_pem,
    public_key_to_pem,
)
from bridge.domain import Envelope, Pay
from bridge.signing import endorse_legs, sign_as_party

MESSAGE = b"cbdc-bridge/v1/instruction\x00" + b'{"amount":125000,"currency":"CNY"}'
# order of the P-256 group
CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

VERIFIERS: tuple[type[FastVerifier] | type[ReferenceVerifier], ...] = (
    FastVerifier,
    ReferenceVerifier,
)


@pytest.fixture(scope="module")
def fast_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="module")
def reference_key(fast_key: PrivateKey) -> ReferenceSigner:
    return ReferenceSigner.from_scalar(fast_key.private_scalar())


@pytest.fixture(params=VERIFIERS, ids=["fast", "reference"])
def verifier(request: pytest.FixtureRequest) -> Verifier:
    verifier: Verifier = request.param()
    return verifier


@pytest.fixture(params=["fast", "reference"])
def signer(
    request: pytest.FixtureRequest, fast_key: PrivateKey, reference_key: ReferenceSigner
) -> Signer:
    return fast_key if request.param == "fast" else reference_key


# ---------------------------------------------------------------------------- interoperation


def test_reference_signer_from_scalar_has_same_public_key(
    fast_key: PrivateKey, reference_key: ReferenceSigner
) -> None:
    """A reference signer built from the fast key's scalar has the same public key."""
    assert reference_key.public_key == fast_key.public_key
    assert len(fast_key.public_key) == PUBLIC_KEY_LENGTH
    assert fast_key.public_key[0] == 0x04


def test_reference_signer_from_pem_has_same_public_key(fast_key: PrivateKey) -> None:
    """The fast key's PKCS#8 PEM loads into the reference signer as the same key."""
    assert ReferenceSigner.from_pem(fast_key.to_pem()).public_key == fast_key.public_key


def test_fast_key_from_reference_pem_has_same_public_key(reference_key: ReferenceSigner) -> None:
    """The reference signer's PKCS#8 PEM loads into the fast key as the same key."""
    assert PrivateKey.from_pem(reference_key.to_pem()).public_key == reference_key.public_key


def test_reference_pem_is_pkcs8_version_0(reference_key: ReferenceSigner) -> None:
    """The reference signer writes PKCS#8 v0 that it reads back itself."""
    pem = reference_key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ecdsa.der.unpem(pem)[3:6] == b"\x02\x01\x00"
    assert ReferenceSigner.from_pem(pem).public_key == reference_key.public_key


def test_every_verifier_accepts_every_signer(signer: Signer, verifier: Verifier) -> None:
    """Signatures of either implementation verify with either implementation."""
    signature = signer.sign(MESSAGE)
    assert len(signature) == SIGNATURE_LENGTH
    assert verifier.verify(signer.public_key, MESSAGE, signature)


def test_fast_signature_verifies_with_reference_after_pem_round_trip(fast_key: PrivateKey) -> None:
    """A key moved through PEM still signs what the other implementation verifies."""
    reference = ReferenceSigner.from_pem(fast_key.to_pem())
    assert ReferenceVerifier().verify(reference.public_key, MESSAGE, fast_key.sign(MESSAGE))
    assert FastVerifier().verify(fast_key.public_key, MESSAGE, reference.sign(MESSAGE))


def test_reference_signatures_are_deterministic(reference_key: ReferenceSigner) -> None:
    """The reference signer uses RFC 6979 nonces: same message, same signature."""
    assert reference_key.sign(MESSAGE) == reference_key.sign(MESSAGE)


def test_fast_signatures_use_fresh_nonces_yet_all_verify(fast_key: PrivateKey) -> None:
    """The fast signer's signatures differ per call and every one of them verifies."""
    first, second = fast_key.sign(MESSAGE), fast_key.sign(MESSAGE)
    assert first != second
    for signature in (first, second):
        assert ReferenceVerifier().verify(fast_key.public_key, MESSAGE, signature)


def test_high_s_signature_is_accepted_by_both(fast_key: PrivateKey) -> None:
    """The malleable (r, n - s) twin of a signature verifies in both (no low-s rule)."""
    signature = fast_key.sign(MESSAGE)
    s = int.from_bytes(signature[32:], "big")
    twin = signature[:32] + (CURVE_ORDER - s).to_bytes(32, "big")
    for verifier in (FastVerifier(), ReferenceVerifier()):
        assert verifier.verify(fast_key.public_key, MESSAGE, twin)


# ---------------------------------------------------------------------------- rejections


def test_tampered_message_is_rejected(signer: Signer, verifier: Verifier) -> None:
    """A signature does not verify for a message differing by one byte."""
    signature = signer.sign(MESSAGE)
    assert not verifier.verify(signer.public_key, MESSAGE[:-1] + b"!", signature)
    assert not verifier.verify(signer.public_key, MESSAGE + b"\x00", signature)


def test_tampered_signature_is_rejected(signer: Signer, verifier: Verifier) -> None:
    """A signature with one flipped bit does not verify."""
    signature = bytearray(signer.sign(MESSAGE))
    signature[5] ^= 0x10
    assert not verifier.verify(signer.public_key, MESSAGE, bytes(signature))


def test_wrong_key_is_rejected(signer: Signer, verifier: Verifier) -> None:
    """A signature does not verify against another party's public key."""
    other = PrivateKey.generate().public_key
    assert not verifier.verify(other, MESSAGE, signer.sign(MESSAGE))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda sig: b"", id="empty"),
        pytest.param(lambda sig: sig[:-1], id="short"),
        pytest.param(lambda sig: sig + b"\x00", id="long"),
        pytest.param(lambda sig: bytes(32) + sig[32:], id="zero-r"),
        pytest.param(lambda sig: sig[:32] + bytes(32), id="zero-s"),
        pytest.param(lambda sig: bytes(64), id="all-zero"),
        pytest.param(lambda sig: b"\xff" * 64, id="r-s-above-order"),
        pytest.param(lambda sig: CURVE_ORDER.to_bytes(32, "big") + sig[32:], id="r-equal-to-order"),
        pytest.param(lambda sig: bytes(range(64)), id="garbage"),
        pytest.param(lambda sig: b"0" * 70, id="der-sized-garbage"),
    ],
)
def test_malformed_signature_is_rejected(
    mangle: object, signer: Signer, verifier: Verifier
) -> None:
    """Wrong-length, zero, out-of-range or garbage signatures are rejected, not raised."""
    assert callable(mangle)
    signature = mangle(signer.sign(MESSAGE))
    assert not verifier.verify(signer.public_key, MESSAGE, signature)


def test_der_encoded_signature_is_rejected(fast_key: PrivateKey, verifier: Verifier) -> None:
    """Only raw r||s is the wire format; a DER signature is refused."""
    raw = fast_key.sign(MESSAGE)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    assert not verifier.verify(fast_key.public_key, MESSAGE, der)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda key: b"", id="empty"),
        pytest.param(lambda key: key[:-1], id="short"),
        pytest.param(lambda key: key + b"\x00", id="long"),
        pytest.param(lambda key: b"\x05" + key[1:], id="bad-prefix"),
        pytest.param(lambda key: key[:1] + bytes(64), id="zero-point"),
        pytest.param(lambda key: key[:-1] + bytes([key[-1] ^ 1]), id="off-curve"),
        pytest.param(lambda key: key[1:33], id="x-only"),
        pytest.param(lambda key: b"\x04" + b"\xff" * 64, id="coordinates-above-p"),
    ],
)
def test_malformed_public_key_is_rejected(
    mangle: object, fast_key: PrivateKey, verifier: Verifier
) -> None:
    """Wrong-length, off-curve or garbage public keys make verification fail, not raise."""
    assert callable(mangle)
    signature = fast_key.sign(MESSAGE)
    assert not verifier.verify(mangle(fast_key.public_key), MESSAGE, signature)


def test_fast_verifier_does_not_cache_a_rejected_key(fast_key: PrivateKey) -> None:
    """A malformed key is not cached; a good key still verifies after it."""
    verifier = FastVerifier()
    signature = fast_key.sign(MESSAGE)
    assert not verifier.verify(b"\x04" + bytes(64), MESSAGE, signature)
    assert verifier.verify(fast_key.public_key, MESSAGE, signature)
    assert not verifier.verify(fast_key.public_key, MESSAGE + b"x", signature)


def test_private_key_refuses_other_curves() -> None:
    """Only P-256 keys are accepted, from an object or from PEM."""
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        PrivateKey(other)
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        PrivateKey.from_pem(pem)


def test_private_key_refuses_non_ec_pem() -> None:
    """A PEM holding a non-EC key is refused."""
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="elliptic-curve"):
        PrivateKey.from_pem(pem)


# ---------------------------------------------------------------------------- key files


def test_save_and_load_round_trip(tmp_path: Path, fast_key: PrivateKey) -> None:
    """save writes the private key (0600) and a .pub.pem; load restores the same key."""
    path = tmp_path / "keys" / "PBOC.pem"
    fast_key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = PrivateKey.load(path)
    assert loaded.public_key == fast_key.public_key
    assert loaded.private_scalar() == fast_key.private_scalar()
    public_path = tmp_path / "keys" / "PBOC.pub.pem"
    assert public_path.exists()
    assert public_key_from_pem(public_path.read_bytes()) == fast_key.public_key
    assert FastVerifier().verify(fast_key.public_key, MESSAGE, loaded.sign(MESSAGE))


def test_public_key_pem_round_trip(fast_key: PrivateKey) -> None:
    """public_key_to_pem and public_key_from_pem are inverse."""
    pem = public_key_to_pem(fast_key.public_key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert public_key_from_pem(pem) == fast_key.public_key


def test_public_key_pem_is_readable_by_reference_library(fast_key: PrivateKey) -> None:
    """The SubjectPublicKeyInfo PEM loads in `ecdsa` as the same point."""
    key = ecdsa.VerifyingKey.from_pem(public_key_to_pem(fast_key.public_key))
    assert b"\x04" + key.to_string() == fast_key.public_key


def test_public_key_from_pem_refuses_other_curves() -> None:
    """A P-384 public key PEM is refused."""
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="P-256"):
        public_key_from_pem(pem)


def test_public_key_to_pem_refuses_malformed_point() -> None:
    """Encoding a point that is not on the curve raises instead of writing a bad file."""
    with pytest.raises(ValueError, match="Invalid EC key"):
        public_key_to_pem(b"\x04" + bytes(64))


def _root_by_rfc9162(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """RFC 9162 section 2.1.3.2's inclusion check, written from the RFC: the root the path
    leads to, or None."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def test_batch_endorsement_verifies_with_openssl_and_ecdsa_from_the_documented_bytes(
    signer: Signer, tmp_path: Path
) -> None:
    """Each leg of a batch endorsed with one signature, its root message rebuilt from
    docs/encoding.md with hashlib alone, verifies with the `openssl` command and `ecdsa`."""
    bank = PrivateKey.generate()
    legs = []
    for amount in (1, 2, 3, 4, 5):
        body = Pay(
            f"interop-{amount}", "ICBC", 2**40, "CCB", "CNY", amount, "", signed_at=2**40 - 60_000
        )
        legs.append((sign_as_party(Envelope.of(body), "ICBC", bank), "ICBC"))
    endorsements = endorse_legs(legs, "PBOC", signer)
    public_pem = tmp_path / "pboc.pem"
    public_pem.write_bytes(public_key_to_pem(signer.public_key))
    reference = ecdsa.VerifyingKey.from_pem(public_pem.read_text())
    roots = set()
    for (envelope, _), endorsement in zip(legs, endorsements, strict=True):
        own = envelope.party_signature("ICBC")
        assert own is not None
        leg = len(own.value).to_bytes(2, "big") + own.value + sha256(envelope.body_bytes).digest()
        leaf = sha256(b"\x00" + leg).digest()
        root = _root_by_rfc9162(leaf, endorsement.index, endorsement.size, list(endorsement.path))
        assert root is not None
        roots.add(root)
        message = b"cbdc-bridge/v1/endorsement-root\x00" + (5).to_bytes(4, "big") + root
        (tmp_path / "message").write_bytes(message)
        r, s = endorsement.value[:32], endorsement.value[32:]
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        (tmp_path / "signature.der").write_bytes(der)
        checked = subprocess.run(
            [
                "openssl", "dgst", "-sha256", "-verify", str(public_pem),
                "-signature", str(tmp_path / "signature.der"), str(tmp_path / "message"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "Verified OK" in checked.stdout
        assert reference.verify(endorsement.value, message, hashfunc=sha256)
        tampered = message[:-1] + bytes([message[-1] ^ 1])
        assert not FastVerifier().verify(signer.public_key, tampered, endorsement.value)
    assert len(roots) == 1  # one root, one signature for the whole batch
