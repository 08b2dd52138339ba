"""Fixtures of the transport tests: development certificates and started nodes on loopback."""

import contextlib

import pytest

from privkeras.net.certs import make_dev_certs
from privkeras.net.credentials import Credentials
from privkeras.net.node import Node

NAMES = ["p0", "p1", "p2", "driver"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A development CA with certificates for p0, p1, p2 and driver."""
    folder = tmp_path_factory.mktemp("certs")
    make_dev_certs(folder, NAMES)
    return folder


@pytest.fixture(scope="session")
def rogue_certs(tmp_path_factory):
    """Another CA, with its own p0 and p1: nobody in the cluster trusts it."""
    folder = tmp_path_factory.mktemp("rogue")
    make_dev_certs(folder, ["p0", "p1", "driver"])
    return folder


def mtls(folder, name):
    return Credentials.mutual_tls(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key")


def token_creds(folder, name, token=None):
    token = token or (folder / "token").read_text()
    return Credentials.token_tls(
        token, folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key"
    )


@contextlib.contextmanager
def started(*nodes):
    """Starts `nodes`, tells each the others' addresses, stops all on exit."""
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.peers.add(other.name, other.address)
        yield nodes
    finally:
        for node in nodes:
            node.stop(grace=1.0)


@pytest.fixture
def creds(certs):
    """`creds(name, mode="mtls", folder=certs, token=None)` -> Credentials."""

    def make(name, mode="mtls", folder=None, token=None):
        folder = folder or certs
        if mode == "token":
            return token_creds(folder, name, token)
        if mode == "insecure":
            return Credentials.insecure_plaintext(token)
        return mtls(folder, name)

    return make


@pytest.fixture
def start():
    """`with start(node, ...)`: started nodes that know each other, stopped after."""
    return started


@pytest.fixture
def pair(certs):
    """Two started mTLS nodes, p0 and p1, that know each other."""
    with started(
        Node("p0", credentials=mtls(certs, "p0"), timeout=10),
        Node("p1", credentials=mtls(certs, "p1"), timeout=10),
    ) as nodes:
        yield nodes
