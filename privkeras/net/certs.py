"""A development certificate authority: one CA, one certificate + key per peer.

`make_dev_certs(directory, names)` writes what mutual TLS between privkeras
processes needs on one machine or a test network:

```
DIR/ca.pem           the CA certificate (every peer trusts it)
DIR/ca.key           the CA's private key (to issue more certificates later)
DIR/<name>.pem       a certificate whose CN and DNS SAN are <name>
DIR/<name>.key       its private key (mode 0600)
DIR/token            a random shared token, for token authentication
```

A peer's name is its identity: a party `p0` presents `p0.pem`, and its peers
accept it as `p0` only because the CA signed that name. `privkeras certs` is
the command around this function.

Notes:
    This is a development CA, as Flower's `generate.sh` is: keys are made on
    this machine and kept unencrypted in one folder, the CA key next to the
    certificates it signed, with no revocation. For deployments across
    organisations each organisation keeps its own key and a CA the parties
    agree on signs certificates for the party names (any CA works: privkeras
    only checks the chain and the name).

Example:

```python
from privkeras.net.certs import make_dev_certs

paths = make_dev_certs("certs", ["p0", "p1", "dealer", "driver"])
paths["p0"]       # DevCertificate(cert=PosixPath('certs/p0.pem'), key=PosixPath('certs/p0.key'))
```
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from privkeras.errors import AuthenticationError, format_received

__all__ = ["DevCertificate", "check_peer_name", "make_dev_certs"]

#: A peer name is a DNS label (it goes into the certificate's DNS SAN).
PEER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
CA_NAME = "privkeras development CA"
VALID_DAYS = 365


@dataclasses.dataclass(frozen=True)
class DevCertificate:
    """Where one peer's certificate and private key were written."""

    cert: Path
    key: Path


def check_peer_name(name: object) -> str:
    """Returns `name` if it can be a peer's identity, else raises `ValueError`.

    A name is a DNS label: letters, digits and inner hyphens, at most 63
    characters (`p0`, `dealer`, `alice`, `model-owner`).
    """
    if not isinstance(name, str) or not PEER_NAME.match(name):
        raise ValueError(
            "Expected a peer name made of letters, digits and inner hyphens, "
            f"at most 63 characters (a DNS label such as 'p0'). {format_received(name=name)}"
        )
    return name


def make_dev_certs(
    directory: str | os.PathLike,
    names: Iterable[str],
    *,
    overwrite: bool = False,
    valid_days: int = VALID_DAYS,
) -> dict[str, DevCertificate]:
    """Makes a development CA and one certificate + key per name in `directory`.

    Args:
        directory: Folder to write into (created if missing).
        names: Peer names (parties, the driver, data owners, servers); each
            becomes the CN and the DNS SAN of its certificate.
        overwrite: Replace files that exist. Without it an existing file is
            an error, so that a running cluster's keys are not lost by mistake.
        valid_days: Validity of every certificate, in days.

    Returns:
        `{"ca": DevCertificate(ca.pem, ca.key), name: DevCertificate(...), ...}`.

    Raises:
        ValueError: A name is not a valid peer name, or is given twice.
        AuthenticationError: A file exists and `overwrite` is False, or the
            folder cannot be written.
    """
    names = [check_peer_name(name) for name in names]
    if not names or len(set(names)) != len(names) or "ca" in names:
        raise ValueError(
            "Expected distinct peer names, at least one, none called 'ca'. "
            + format_received(names=names)
        )
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    targets = [directory / f"{n}.{ext}" for n in ["ca", *names] for ext in ("pem", "key")]
    targets.append(directory / "token")
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise AuthenticationError(
            "Expected a folder without certificates in it (pass overwrite=True / --force "
            f"to replace them). Received: existing files {existing}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AuthenticationError(
            f"Could not create the certificate folder. Received: directory='{directory}' ({error})"
        ) from error

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        _builder(ca_subject, ca_subject, ca_key.public_key(), now, valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, _sha256())
    )
    written = {"ca": _write_pair(directory, "ca", ca_cert, ca_key)}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, ca_subject, key.public_key(), now, valid_days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [
                        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, _sha256())
        )
        written[name] = _write_pair(directory, name, cert, key)
    _write_private(directory / "token", secrets.token_urlsafe(32).encode() + b"\n")
    return written


def _builder(subject, issuer, public_key, now, valid_days):
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
    )


def _key_usage(ca: bool):
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write_pair(directory: Path, name: str, cert, key) -> DevCertificate:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return DevCertificate(cert=cert_path, key=key_path)


def _write_private(path: Path, data: bytes) -> None:
    """Writes `data` to `path` readable by its owner only (0600)."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
