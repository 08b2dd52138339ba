"""Development certificates and credentials: identities, file checks, secrets kept out of sight."""

import stat

import pytest
from cryptography import x509

from privkeras.errors import AuthenticationError
from privkeras.net.certs import check_peer_name, make_dev_certs
from privkeras.net.credentials import Credentials, InsecureTransportWarning, peer_identities


def test_dev_certs_name_each_party_in_cn_and_dns_san(certs):
    for name in ("p0", "p1", "p2", "driver"):
        cert = x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == name
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [name]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages


def test_keys_and_token_are_private_to_their_owner(certs):
    for name in ("ca.key", "p0.key", "token"):
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600


def test_dev_certs_refuse_to_overwrite_and_bad_names(tmp_path):
    make_dev_certs(tmp_path, ["p0"])
    with pytest.raises(AuthenticationError, match="existing files"):
        make_dev_certs(tmp_path, ["p0"])
    make_dev_certs(tmp_path, ["p0"], overwrite=True)
    with pytest.raises(ValueError, match="distinct peer names"):
        make_dev_certs(tmp_path / "x", ["p0", "p0"])
    for bad in ("", "-p0", "p 0", "p0.", "a" * 64, "p_0", 3):
        with pytest.raises(ValueError, match="DNS label"):
            check_peer_name(bad)


def test_mutual_tls_credentials_know_their_identity(certs):
    creds = Credentials.mutual_tls(certs / "ca.pem", certs / "p0.pem", certs / "p0.key")
    assert (creds.mode, creds.identity) == ("mtls", "p0")
    assert "BEGIN" not in repr(creds) and "p0" in repr(creds)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(cert="missing.pem"), "readable file for cert"),
        (dict(key="p1.key"), "key of the certificate"),
        (dict(ca="rogue"), "signed by the CA"),
        (dict(cert="garbage"), "PEM certificate for cert"),
        (dict(key="garbage"), "PEM private key"),
    ],
)
def test_certificate_problems_are_authentication_errors_before_anything_starts(
    certs, rogue_certs, tmp_path, change, match
):
    (tmp_path / "garbage").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    paths = {"ca": certs / "ca.pem", "cert": certs / "p0.pem", "key": certs / "p0.key"}
    for field, value in change.items():
        paths[field] = {
            "rogue": rogue_certs / "ca.pem",
            "garbage": tmp_path / "garbage",
            "missing.pem": tmp_path / "missing.pem",
        }.get(value, certs / value)
    with pytest.raises(AuthenticationError, match=match):
        Credentials.mutual_tls(**paths)


def test_unreadable_files_are_named(tmp_path, certs):
    locked = tmp_path / "locked.pem"
    locked.write_bytes((certs / "p0.pem").read_bytes())
    locked.chmod(0)
    try:
        locked.read_bytes()
        locked = tmp_path  # root reads anything: a directory is unreadable as a file
    except PermissionError:
        pass
    with pytest.raises(AuthenticationError, match=f"Received: cert='{locked}'"):
        Credentials.mutual_tls(certs / "ca.pem", locked, certs / "p0.key")


def test_expired_certificates_are_refused(tmp_path):
    make_dev_certs(tmp_path, ["p0"], valid_days=0)  # valid from 5 minutes ago until now
    with pytest.raises(AuthenticationError, match="valid now"):
        Credentials.mutual_tls(tmp_path / "ca.pem", tmp_path / "p0.pem", tmp_path / "p0.key")


def test_token_credentials(certs, monkeypatch):
    token = (certs / "token").read_text()
    server = Credentials.token_tls(token, certs / "ca.pem", certs / "p0.pem", certs / "p0.key")
    client = Credentials.token_tls(token, certs / "ca.pem")
    assert server.mode == client.mode == "token"
    assert token.strip() not in repr(server)
    metadata = client.call_metadata()
    assert server.token_matches(metadata)
    assert not server.token_matches([("authorization", "Bearer " + "x" * 43)])
    assert not server.token_matches([])
    with pytest.raises(AuthenticationError, match="at least 16"):
        Credentials.token_tls("short", certs / "ca.pem")
    monkeypatch.setenv("PRIVKERAS_TOKEN", token)
    assert Credentials.from_files(ca=certs / "ca.pem").mode == "token"


def test_from_files_needs_a_choice_and_insecure_warns(certs):
    with pytest.raises(AuthenticationError, match="explicit --insecure"):
        Credentials.from_files()
    with pytest.raises(AuthenticationError, match="not both"):
        Credentials.from_files(insecure=True, ca=certs / "ca.pem")
    creds = Credentials.from_files(insecure=True)
    assert creds.mode == "insecure"
    with pytest.warns(InsecureTransportWarning, match="INSECURE"):
        creds.warn_if_insecure("p0")


def test_peer_identities_reads_cn_and_sans():
    context = {"x509_common_name": [b"p0"], "x509_subject_alternative_name": [b"p0", b"alias"]}
    assert peer_identities(context) == {"p0", "alias"}
    assert peer_identities({}) == set()
