"""Owners' long-term identities for secure aggregation: keys bound to their certificates.

Each owner signs its round keys (`SecAggOwner.advertise_keys`) with the
private key of its certificate; its neighbours and the coordinator check
the signature with the public key of that certificate, after checking that
the certificate names the owner and was issued by the certificate
authority they trust. The coordinator forwards the keys and the
certificates, but cannot substitute either: it would need a certificate for
the owner's name from that authority.

- A `privkeras worker` signs with its mutual-TLS key (`OwnerIdentity.from_credentials`:
  the `--certs` folder's `NAME.pem`, `NAME.key` and `ca.pem`). The development
  CA (`privkeras certs`) issues ECDSA P-256 certificates; Ed25519 ones work too.
- Simulated owners (`FederatedData.simulate`) get a certificate each from an
  in-memory authority made for them (`SimulatedAuthority`: an Ed25519 CA
  whose private key never leaves the process, a fresh Ed25519 key per owner).

Signatures are 64 bytes: Ed25519 (RFC 8032), or ECDSA P-256 with SHA-256 as
the raw pair (r, s) of 32 bytes each (IEEE P1363 form).

Notes:
    Reusing the TLS key for these signatures is safe by domain separation:
    what is signed is a 32-byte SHA-256 commitment that starts from the
    domain `privkeras.secagg/v1/advertised-keys` (`owner.key_payload`), while
    TLS 1.3 signs 64 spaces, a context string and a transcript hash (RFC 8446,
    Section 4.4.3) and TLS 1.2 signs both handshake randoms and the key
    exchange parameters: no TLS signature is a valid signature on a payload
    and vice versa, short of a SHA-256 collision. The guarantee that the
    coordinator cannot substitute keys holds as long as it cannot obtain a
    certificate for an owner's name from the owners' authority (with the
    development CA, whoever holds `ca.key` can).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from privkeras.backends.federated.secagg.crypto import SIGNATURE_BYTES
from privkeras.core.random import SecureStream
from privkeras.errors import AuthenticationError

__all__ = [
    "CertificateSigner",
    "CertificateVerifier",
    "OwnerIdentity",
    "SimulatedAuthority",
    "UncheckedCertificates",
    "certificate_names",
    "load_certificate",
]

_HALF = SIGNATURE_BYTES // 2
#: Certificates larger than this are refused before parsing (DER of a P-256 one: ~450 bytes).
MAX_CERTIFICATE_BYTES = 16_384


def load_certificate(data: bytes | x509.Certificate, what: str) -> x509.Certificate:
    """A certificate from DER or PEM bytes.

    Raises:
        AuthenticationError: For bytes that are not one certificate.
    """
    if isinstance(data, x509.Certificate):
        return data
    data = bytes(data)
    if not 0 < len(data) <= MAX_CERTIFICATE_BYTES:
        raise AuthenticationError(
            f"Expected a certificate of 1 to {MAX_CERTIFICATE_BYTES} bytes for {what}. "
            f"Received: {len(data)} bytes"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise AuthenticationError(
            f"Expected a certificate for {what}. Received: bytes that do not parse "
            f"({str(error)[:80]})"
        ) from None


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The names a certificate binds: its DNS subject alternative names and its CN."""
    names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.update(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return {str(name) for name in names}


def _check_key(key, what: str):
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise AuthenticationError(
        f"Expected an Ed25519 or ECDSA P-256 certificate key for {what}. "
        f"Received: a {type(key).__name__}"
    )


class CertificateSigner:
    """Signs with a certificate's private key (Ed25519, or ECDSA P-256 + SHA-256): 64 bytes.

    Args:
        private_key: An `Ed25519PrivateKey` or a P-256 `EllipticCurvePrivateKey`.
    """

    def __init__(self, private_key):
        _check_key(private_key.public_key(), "the signing key")
        self._key = private_key

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_HALF, "big") + s.to_bytes(_HALF, "big")


def verify_signature(key, data: bytes, signature: bytes) -> bool:
    """Whether `signature` (64 bytes, as `CertificateSigner` makes it) is `key`'s on `data`."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            r = int.from_bytes(signature[:_HALF], "big")
            s = int.from_bytes(signature[_HALF:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


class CertificateVerifier:
    """Owners' signing keys from their certificates, checked against trusted authorities.

    A `KeyVerifier` (`verify(name, data, signature)`) that knows an owner once
    `add(name, certificate)` accepted its certificate: issued directly by one
    of `authorities`, valid now, naming `name` (CN or DNS SAN), with an
    Ed25519 or P-256 key.

    Args:
        authorities: The CA certificates to trust (PEM/DER bytes or loaded).
    """

    def __init__(self, authorities: Iterable[bytes | x509.Certificate]):
        self._authorities = [load_certificate(a, "a certificate authority") for a in authorities]
        self._keys: dict[str, object] = {}
        self._certificates: dict[str, bytes] = {}

    def knows(self, name: str) -> bool:
        return name in self._keys

    def certificate(self, name: str) -> bytes:
        """The DER of `name`'s accepted certificate."""
        return self._certificates[name]

    def add(self, name: str, certificate: bytes | x509.Certificate) -> None:
        """Accepts `name`'s certificate after checking it (see the class docstring).

        Raises:
            AuthenticationError: Naming `name` and what is wrong with the certificate.
        """
        cert = load_certificate(certificate, f"owner {name!r}")
        if name not in certificate_names(cert):
            raise AuthenticationError(
                f"Expected a certificate for owner {name!r}. Received: a certificate for "
                f"{sorted(certificate_names(cert))}"
            )
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AuthenticationError(
                f"Expected a certificate for owner {name!r} valid now. Received: one valid from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
            )
        self._check_issuer(name, cert)
        self._keys[name] = _check_key(cert.public_key(), f"owner {name!r}")
        self._certificates[name] = cert.public_bytes(serialization.Encoding.DER)

    def _check_issuer(self, name: str, cert: x509.Certificate) -> None:
        if not any(_issued_by(cert, authority) for authority in self._authorities):
            raise AuthenticationError(
                f"Expected owner {name!r}'s certificate to be issued by a trusted authority. "
                f"Received: one issued by {cert.issuer.rfc4514_string()!r}, which is not "
                "trusted (a key the coordinator substituted, or another organisation's CA)"
            )

    def verify(self, name: str, data: bytes, signature: bytes) -> None:
        key = self._keys.get(name)
        if key is None:
            raise AuthenticationError(
                f"Expected a certificate for owner {name!r} before its keys. Received: keys "
                "signed by an owner whose certificate was not presented"
            )
        if not verify_signature(key, data, signature):
            raise AuthenticationError(
                f"Expected round keys signed by owner {name!r}'s certificate key. Received: a "
                "signature that does not verify (keys substituted or corrupted in transit)"
            )


class UncheckedCertificates(CertificateVerifier):
    """Takes certificates naming their owner without checking who issued them.

    For a coordinator that has no CA for some owners (a custom
    `OwnerProtocol`): it can then only check signatures against the
    certificate each owner presents. The owners never use this: they check
    each other's certificates against their own CA.
    """

    def __init__(self):
        super().__init__([])

    def _check_issuer(self, name: str, cert: x509.Certificate) -> None:
        return None


def _issued_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclasses.dataclass(frozen=True, eq=False)
class OwnerIdentity:
    """What an owner signs with and whom it trusts.

    Attributes:
        name: The owner's name (its certificate's).
        certificate: Its certificate, DER.
        authority: The CA certificate it checks its neighbours' certificates against, PEM.
        signer: Signs with the certificate's private key.
    """

    name: str
    certificate: bytes
    authority: bytes
    signer: CertificateSigner = dataclasses.field(repr=False)

    @classmethod
    def from_pem(cls, name: str, certificate: bytes, private_key: bytes, authority: bytes):
        """An identity from PEM bytes; checks that the certificate names `name`.

        Raises:
            AuthenticationError: A certificate for another name, or keys of another kind.
        """
        cert = load_certificate(certificate, f"owner {name!r}")
        if name not in certificate_names(cert):
            raise AuthenticationError(
                f"Expected owner {name!r}'s own certificate to sign its secure-aggregation keys. "
                f"Received: a certificate for {sorted(certificate_names(cert))} (run the worker "
                "with --name equal to its certificate's name)"
            )
        key = serialization.load_pem_private_key(private_key, password=None)
        load_certificate(authority, "the certificate authority")
        return cls(
            name, cert.public_bytes(serialization.Encoding.DER), authority, CertificateSigner(key)
        )

    @classmethod
    def from_credentials(cls, name: str, credentials) -> OwnerIdentity | None:
        """The identity of a worker serving with `privkeras.net.Credentials`, or None.

        None when the credentials hold no certificate and key (plain text):
        such a worker refuses secure-aggregation jobs.
        """
        if credentials.insecure or not (
            credentials.cert_chain and credentials.private_key and credentials.ca_cert
        ):
            return None
        return cls.from_pem(
            name, credentials.cert_chain, credentials.private_key, credentials.ca_cert
        )

    def verifier(self) -> CertificateVerifier:
        """A verifier trusting this owner's authority."""
        return CertificateVerifier([self.authority])


class SimulatedAuthority:
    """An in-memory Ed25519 certificate authority for simulated owners.

    Its private key lives only in this object (in the coordinator's process,
    as every simulated owner does); each `identity(name)` is a fresh Ed25519
    key with a certificate for `name`. Keys come from `SecureStream`.

    Example:

    ```python
    authority = SimulatedAuthority()
    alice = authority.identity("alice")
    alice.verifier().add("alice", alice.certificate)
    ```
    """

    def __init__(self, valid_days: int = 7):
        self._stream = SecureStream()
        self._key = self._new_key()
        self._name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "privkeras simulated owners CA")]
        )
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self._until = self._now + datetime.timedelta(days=valid_days)
        cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, None)
        )
        self.authority = cert.public_bytes(serialization.Encoding.PEM)

    def _new_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self._stream.random_bytes(32))

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(minutes=5))
            .not_valid_after(self._until)
        )

    def identity(self, name: str) -> OwnerIdentity:
        """A new key and certificate for owner `name` (1 to 64 characters: a CN).

        Raises:
            AuthenticationError: For a name that cannot be a certificate's name.
        """
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise AuthenticationError(
                "Expected a simulated owner name of 1 to 64 characters for its certificate. "
                f"Received: name={name!r}"
            )
        key = self._new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, None)
        )
        return OwnerIdentity(
            name,
            cert.public_bytes(serialization.Encoding.DER),
            self.authority,
            CertificateSigner(key),
        )
