"""How nodes authenticate each other: mutual TLS, a shared token over TLS, or (asked for) nothing.

Three modes, chosen by what a `Credentials` holds:

- **mutual TLS** (`Credentials.mutual_tls(ca, cert, key)`): every node
  presents a certificate signed by the cluster's CA and checks its peer's.
  A node is its certificate's name: a client connecting to peer `p1`
  accepts only a server certificate for `p1` (DNS SAN), and a server
  accepts a frame that claims sender `p0` only over a connection whose
  client certificate names `p0` (CN or DNS SAN).
- **token over TLS** (`Credentials.token_tls(token, ca, cert=..., key=...)`):
  servers present a certificate, clients check it as above and send a
  shared token with every call; servers compare it in constant time. Peers'
  names are then only claimed, not proven: one token is one trust group.
- **insecure** (`Credentials.insecure_plaintext()`): plain-text gRPC, for
  debugging on loopback only. It warns loudly, every time a node uses it.

Secrets
(private key, token) are never part of a `repr`, a log line or an error.

Notes:
    Peer identity follows RFC 6125: the expected name is checked against the
    certificate's DNS subject alternative names by gRPC's hostname check
    (`grpc.ssl_target_name_override`), so the address a peer is reached at
    can be any IP. Token comparison uses `hmac.compare_digest`. The
    certificates `privkeras certs` makes are for development
    (`privkeras.net.certs`).

Example:

```python
from privkeras.net.credentials import Credentials

creds = Credentials.from_files(ca="certs/ca.pem", cert="certs/p0.pem", key="certs/p0.key")
creds.mode, creds.identity          # ('mtls', 'p0')
```
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from privkeras.errors import AuthenticationError, format_received

__all__ = ["TOKEN_ENV", "Credentials", "InsecureTransportWarning", "peer_identities", "tls_refusal"]

logger = logging.getLogger("privkeras.net")

#: Environment variable a token may come from (keeps it off the command line).
TOKEN_ENV = "PRIVKERAS_TOKEN"
MIN_TOKEN_BYTES = 16
_AUTH_HEADER = "authorization"
_BEARER = "Bearer "


class InsecureTransportWarning(RuntimeWarning):
    """A node talks plain text: anyone on the network reads and forges its messages."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a node presents and what it accepts. Build with one of the class methods.

    Attributes:
        ca_cert: PEM of the CA that signs the cluster's certificates.
        cert_chain: PEM of this node's certificate (mutual TLS; servers in token mode).
        private_key: PEM of this node's private key.
        token: The shared token (token mode), or None.
        insecure: Plain text, no TLS.
    """

    ca_cert: bytes | None = dataclasses.field(default=None, repr=False)
    cert_chain: bytes | None = dataclasses.field(default=None, repr=False)
    private_key: bytes | None = dataclasses.field(default=None, repr=False)
    token: bytes | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False
    identity: str | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def mutual_tls(cls, ca: Any, cert: Any, key: Any) -> Credentials:
        """Mutual TLS: `ca`, `cert` and `key` are PEM bytes or paths to PEM files.

        Raises:
            AuthenticationError: A file cannot be read, a PEM does not parse,
                the key does not match the certificate, the certificate is not
                signed by `ca`, or it is expired.
        """
        ca_pem, cert_pem, key_pem = _pem(ca, "ca"), _pem(cert, "cert"), _pem(key, "key")
        identity = _check_certificate(ca_pem, cert_pem, key_pem)
        return cls(ca_pem, cert_pem, key_pem, None, False, identity)

    @classmethod
    def token_tls(
        cls, token: str | bytes, ca: Any, cert: Any = None, key: Any = None
    ) -> Credentials:
        """A shared token over TLS. Clients need `ca` only; servers also `cert` and `key`."""
        ca_pem = _pem(ca, "ca")
        if (cert is None) != (key is None):
            raise AuthenticationError(
                "Expected both cert and key, or neither (a client). "
                + format_received(cert=cert is not None, key=key is not None)
            )
        identity, cert_pem, key_pem = None, None, None
        if cert is not None:
            cert_pem, key_pem = _pem(cert, "cert"), _pem(key, "key")
            identity = _check_certificate(ca_pem, cert_pem, key_pem)
        else:
            _load_certificate(ca_pem, "ca")
        value = _token(token)
        if value is None:
            raise AuthenticationError("Expected a token for token authentication. Received: none")
        return cls(ca_pem, cert_pem, key_pem, value, False, identity)

    @classmethod
    def insecure_plaintext(cls, token: str | bytes | None = None) -> Credentials:
        """Plain text, no TLS: anyone on the network can read and forge messages."""
        return cls(None, None, None, _token(token), True, None)

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | os.PathLike | None = None,
        cert: str | os.PathLike | None = None,
        key: str | os.PathLike | None = None,
        token_file: str | os.PathLike | None = None,
        token: str | bytes | None = None,
        insecure: bool = False,
    ) -> Credentials:
        """Credentials from the usual command-line flags (`--ca --cert --key --token-file --insecure`).

        The token comes from `token`, else `token_file`, else the
        `PRIVKERAS_TOKEN` environment variable. With a certificate and key the
        mode is mutual TLS; with only a CA and a token it is token over TLS.

        Raises:
            AuthenticationError: Nothing usable was given, or a file is unreadable
                or invalid.
        """
        if token is None and token_file is not None:
            token = _read(token_file, "token_file").strip()
        if token is None and os.environ.get(TOKEN_ENV):
            token = os.environ[TOKEN_ENV].strip()
        if insecure:
            if ca or cert or key:
                raise AuthenticationError(
                    "Expected either insecure=True or certificates, not both. "
                    + format_received(insecure=True, ca=ca, cert=cert, key=key)
                )
            return cls.insecure_plaintext(token)
        if ca is None:
            raise AuthenticationError(
                "Expected a CA certificate (--ca) with --cert/--key (mutual TLS) or a token "
                "(token over TLS), or an explicit --insecure. Received: no credentials"
            )
        if cert is not None and key is not None and token is None:
            return cls.mutual_tls(ca, cert, key)
        if token is not None:
            return cls.token_tls(token, ca, cert, key)
        return cls.mutual_tls(ca, cert, key)

    # -- what modes mean -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        """'mtls', 'token' (token over TLS) or 'insecure'."""
        if self.insecure:
            return "insecure"
        return "token" if self.token is not None else "mtls"

    @property
    def requires_client_certificate(self) -> bool:
        """Whether servers with these credentials demand a client certificate."""
        return not self.insecure and self.token is None

    def warn_if_insecure(self, who: str) -> None:
        """Warns, loudly, that `who` talks plain text."""
        if self.insecure:
            message = (
                f"privkeras node {who!r} uses an INSECURE plain-text transport: anyone on the "
                "network can read and forge its messages (shares, weights, tokens). Use "
                "mutual TLS (privkeras certs) outside a debugging session on loopback."
            )
            warnings.warn(message, InsecureTransportWarning, stacklevel=3)
            logger.warning(message)

    def server_credentials(self):
        """`grpc.ServerCredentials`, or None for plain text.

        Raises:
            AuthenticationError: There is no certificate to serve with.
        """
        import grpc

        if self.insecure:
            return None
        if self.cert_chain is None or self.private_key is None:
            raise AuthenticationError(
                "Expected a certificate and key to serve with (--cert, --key). Received: none"
            )
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.ca_cert,
            require_client_auth=self.requires_client_certificate,
        )

    def channel_credentials(self):
        """`grpc.ChannelCredentials`, or None for plain text."""
        import grpc

        if self.insecure:
            return None
        if self.requires_client_certificate:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca_cert,
                private_key=self.private_key,
                certificate_chain=self.cert_chain,
            )
        return grpc.ssl_channel_credentials(root_certificates=self.ca_cert)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call (the token, if any)."""
        if self.token is None:
            return ()
        return ((_AUTH_HEADER, _BEARER + self.token.decode("ascii")),)

    def token_matches(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        """Whether `metadata` carries this node's token (constant-time compare)."""
        if self.token is None:
            return True
        expected = _BEARER.encode() + self.token
        presented = b""
        for name, value in metadata:
            if name == _AUTH_HEADER:
                presented = value.encode("utf-8", "replace") if isinstance(value, str) else value
        return hmac.compare_digest(presented, expected)


# ----------------------------------------------------------------------------- helpers


def tls_refusal(address: str, server_name: str, credentials: Credentials, timeout: float = 2.0):
    """Why a TLS server closes connections from us, if it is our certificate; else None.

    Under TLS 1.3 a server checks the client's certificate after the client
    has finished its handshake, so gRPC only sees "Socket closed". This probe
    repeats the handshake with Python's `ssl` and the same certificate: a
    gRPC server that accepts it speaks first (HTTP/2 settings); one that
    refuses it sends an alert or closes the connection at once. The key never
    touches the disk
    (it is handed to OpenSSL through an anonymous memory file on Linux).
    """
    import socket
    import ssl

    from privkeras.net.cluster import parse_address

    if credentials.insecure or credentials.ca_cert is None:
        return None
    host, port = parse_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=credentials.ca_cert.decode("ascii", "replace"))
    context.set_alpn_protocols(["h2"])
    if credentials.cert_chain is not None and credentials.requires_client_certificate:
        with (
            _memory_file(credentials.cert_chain) as cert,
            _memory_file(credentials.private_key) as key,
        ):
            context.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((host, port), timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.settimeout(timeout)
            try:
                first = tls.recv(1)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                first = b""
    except ssl.SSLError as error:
        reason = str(error.reason or error)
        if "ALERT" in reason.upper() or "CERTIFICATE" in reason.upper():
            return reason
        return None
    except OSError:
        return None
    if first:  # a gRPC server speaks first (HTTP/2 SETTINGS) once it accepts us
        return None
    return "it closed the connection right after the TLS handshake, without a word"


class _memory_file:
    """A path to `data` that lives in memory only (memfd on Linux, else a private temp file)."""

    def __init__(self, data: bytes | None):
        self.data = data or b""

    def __enter__(self) -> str:
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("privkeras-pem")
            os.write(self._fd, self.data)
            return f"/proc/self/fd/{self._fd}"
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        path = Path(self._dir.name) / "pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.data)
        self._fd = None
        return str(path)

    def __exit__(self, *exc_info) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
        else:
            self._dir.cleanup()


def peer_identities(auth_context: dict) -> set[str]:
    """The names a TLS client proved: its certificate's CN and DNS SANs."""
    names = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return names


def _token(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    data = data.strip()
    if len(data) < MIN_TOKEN_BYTES or not data.isascii() or any(c < 33 or c > 126 for c in data):
        raise AuthenticationError(
            f"Expected a token of at least {MIN_TOKEN_BYTES} printable ASCII characters without "
            f"spaces. Received: a token of {len(data)} bytes"
        )
    return data


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise AuthenticationError(
            f"Expected a readable file for {what}. Received: {what}='{path}' "
            f"({error.strerror or error})"
        ) from None


def _pem(value: Any, what: str) -> bytes:
    if value is None:
        raise AuthenticationError(f"Expected a PEM file or bytes for {what}. Received: {what}=None")
    if isinstance(value, (bytes, bytearray)) and bytes(value).lstrip().startswith(b"-----BEGIN"):
        return bytes(value)
    return _read(value, what)


def _load_certificate(pem: bytes, what: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise AuthenticationError(
            f"Expected a PEM certificate for {what}. Received: {str(error)[:100]}"
        ) from None


def _check_certificate(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> str:
    """Checks that the key matches the certificate, which `ca` signed and is valid now.

    Returns:
        The certificate's identity (its first DNS SAN, else its CN).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = _load_certificate(ca_pem, "ca")
    cert = _load_certificate(cert_pem, "cert")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise AuthenticationError(
            f"Expected an unencrypted PEM private key for key. Received: {str(error)[:100]}"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, public):
        raise AuthenticationError(
            "Expected the key of the certificate given as cert. Received: another key"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as error:  # ValueError, TypeError or InvalidSignature
        raise AuthenticationError(
            f"Expected a certificate signed by the CA given as ca. Received: {type(error).__name__}"
        ) from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for what, c in (("ca", ca), ("cert", cert)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise AuthenticationError(
                f"Expected a certificate valid now for {what}. Received: valid from "
                f"{c.not_valid_before_utc:%Y-%m-%d} to {c.not_valid_after_utc:%Y-%m-%d}"
            )
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sans.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    common = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if names:
        return names[0]
    if common:
        return str(common[0].value)
    raise AuthenticationError("Expected a certificate with a CN or a DNS SAN. Received: neither")
