"""Key agreement, key derivation, share encryption, signatures and mask expansion.

- Key agreement: X25519 (RFC 7748). Each owner makes two key pairs per round:
  a *channel* pair, whose agreed secrets only encrypt shares in transit, and a
  *mask* pair, whose agreed secrets seed the pairwise masks. Only the mask
  private key is secret-shared, so reconstructing it for a dropped owner never
  opens the channels that carried other owners' shares (Bonawitz et al. 2017).
- Key derivation: HKDF-SHA256 (RFC 5869) of the X25519 output, salted with the
  round id, with the purpose and both owners' indices in `info`; a distinct key
  per direction of each channel, so AES-256-GCM runs with a fixed nonce on a key
  used for exactly one message.
- Masks: a 256-bit seed keys a `privkeras.core.random.SecureStream` (AES-256-CTR)
  whose bytes are the ring elements; never numpy's RandomState or a 32-bit seed.
- Signatures: each owner signs its public keys with a long-term signing key
  (Ed25519, RFC 8032) whose public half the other owners know from credentials,
  so a coordinator that forwards keys cannot substitute its own. Verification
  is pluggable (`KeyVerifier`): `Ed25519Credentials` takes raw public keys or
  the owners' X.509 certificates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privkeras.core.random import SecureStream
from privkeras.errors import AuthenticationError

__all__ = [
    "KEY_BYTES",
    "SIGNATURE_BYTES",
    "Ed25519Credentials",
    "Ed25519Signer",
    "KeyVerifier",
    "Signer",
    "agree",
    "commitment",
    "decrypt",
    "derive_key",
    "encrypt",
    "expand_mask",
    "x25519_keypair",
]

KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: AES-GCM authentication tag.
TAG_BYTES = 16
_NONCE = bytes(12)
_DOMAIN = b"privkeras.secagg/v1/"


@runtime_checkable
class Signer(Protocol):
    """Signs this owner's round keys with its long-term key."""

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class KeyVerifier(Protocol):
    """Checks that `signature` on `data` was made by owner `name`'s long-term key.

    Must raise `AuthenticationError` naming the owner when it was not (or when
    the owner is unknown) and return None otherwise.
    """

    def verify(self, name: str, data: bytes, signature: bytes) -> None: ...


class Ed25519Signer:
    """An Ed25519 long-term signing key.

    Args:
        private_key: The key; None makes a fresh one (tests, development).

    Example:

    ```python
    signer = Ed25519Signer()
    credentials = Ed25519Credentials({"alice": signer.public_key_bytes()})
    credentials.verify("alice", b"data", signer.sign(b"data"))
    ```
    """

    def __init__(self, private_key: ed25519.Ed25519PrivateKey | None = None):
        self._key = private_key or ed25519.Ed25519PrivateKey.generate()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


class Ed25519Credentials:
    """Owners' Ed25519 public keys by name: the default `KeyVerifier`.

    Args:
        public_keys: `{name: raw 32-byte key or Ed25519PublicKey}`.
    """

    def __init__(self, public_keys: Mapping[str, bytes | ed25519.Ed25519PublicKey]):
        self._keys: dict[str, ed25519.Ed25519PublicKey] = {}
        for name, key in public_keys.items():
            if isinstance(key, (bytes, bytearray)):
                if len(key) != KEY_BYTES:
                    raise ValueError(
                        f"Expected a {KEY_BYTES}-byte Ed25519 public key for {name!r}. "
                        f"Received: {len(key)} bytes"
                    )
                key = ed25519.Ed25519PublicKey.from_public_bytes(bytes(key))
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise TypeError(
                    f"Expected an Ed25519 public key for {name!r}. Received: {type(key).__name__}"
                )
            self._keys[name] = key

    @classmethod
    def from_certificates(
        cls, certificates: Mapping[str, bytes | x509.Certificate]
    ) -> Ed25519Credentials:
        """Credentials from owners' certificates (PEM bytes or loaded), with Ed25519 keys.

        The certificates' chains are checked by the transport (mutual TLS);
        this only reads the signing key each one binds to its owner's name.
        """
        keys = {}
        for name, cert in certificates.items():
            if isinstance(cert, (bytes, bytearray)):
                cert = x509.load_pem_x509_certificate(bytes(cert))
            key = cert.public_key()
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise TypeError(
                    f"Expected an Ed25519 certificate key for {name!r}. "
                    f"Received: {type(key).__name__}"
                )
            keys[name] = key
        return cls(keys)

    def verify(self, name: str, data: bytes, signature: bytes) -> None:
        key = self._keys.get(name)
        if key is None:
            raise AuthenticationError(
                f"Expected owner {name!r} among the credentials. Received: a key signed by an "
                f"unknown owner (known: {sorted(self._keys)[:10]})"
            )
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise AuthenticationError(
                f"Expected round keys signed by owner {name!r}'s long-term key. Received: a "
                "signature that does not verify (keys substituted or corrupted in transit)"
            ) from None


def x25519_keypair(stream: SecureStream) -> tuple[x25519.X25519PrivateKey, bytes]:
    """A key pair from 32 bytes of `stream`; returns (private key, raw public key)."""
    private = x25519.X25519PrivateKey.from_private_bytes(stream.random_bytes(KEY_BYTES))
    return private, public_bytes(private)


def public_bytes(private: x25519.X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def agree(private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer's raw public key.

    Raises:
        ValueError: For a public key of the wrong size or of small order (the
            all-zero shared secret is refused by the library).
    """
    peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
    return private.exchange(peer)


def derive_key(shared: bytes, round_id: bytes, purpose: bytes, first: int, second: int) -> bytes:
    """A 32-byte key for `purpose` between owners `first` and `second` (HKDF-SHA256)."""
    info = _DOMAIN + purpose + first.to_bytes(4, "little") + second.to_bytes(4, "little")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=round_id, info=info).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM with a key used for this one message (fixed nonce is then safe)."""
    return AESGCM(key).encrypt(_NONCE, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes | None:
    """The plaintext, or None when the ciphertext does not authenticate."""
    try:
        return AESGCM(key).decrypt(_NONCE, ciphertext, associated)
    except (InvalidTag, ValueError):
        return None


def commitment(purpose: bytes, *parts: bytes) -> bytes:
    """SHA-256 of the domain, `purpose` and length-prefixed `parts`.

    Used as a hiding commitment only to values with 256 bits of entropy (seeds
    and Shamir shares), which need no salt.
    """
    digest = hashlib.sha256(_DOMAIN + purpose)
    for part in parts:
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(part)
    return digest.digest()


def expand_mask(seed: bytes, length: int, ring_bits: int) -> np.ndarray:
    """`length` uniform elements of Z_2^ring_bits from a 256-bit seed (AES-256-CTR)."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"Expected a {KEY_BYTES}-byte seed. Received: {len(seed)} bytes")
    width = ring_bits // 8
    raw = SecureStream(seed=seed).random_bytes(width * length)
    return np.frombuffer(raw, dtype=f"<u{width}").astype(f"u{width}", copy=True)
