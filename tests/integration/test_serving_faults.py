"""Faults and abuse against served MPC bundles: real `privkeras serve` processes on loopback.

One Pond bundle (p0, p1, the dealer) served with small limits: a request
waits up to 0.25 s for company, carries at most 16 rows, a client may send
50 requests/s (burst 100), servers wait 8 s for anything. Malformed,
oversized, too frequent and unauthenticated requests get typed errors and
never crash a server (fuzz); a SIGKILLed compute party makes requests fail
with `PartyError` naming it within the deadline while the others keep
serving (and serve again once it is back); SIGTERM to every server lets the
request in flight finish, refuses new ones, and exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.errors import AuthenticationError, InvalidInputError, PartyError, PrivkerasError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

TIMEOUT = 8.0
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, size=(40, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = pk.PrivateSequential(
        [keras.Input((12,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model.compile(loss="mse", privacy=pk.MPC(protocol="pond"))
    bundle = tmp_path_factory.mktemp("faults") / "bundle"
    model.export(str(bundle), format="mpc")
    limits = {"max_delay": 0.25, "max_request_rows": 16, "rate": 50.0, "burst": 100}
    with pk.serving.local_servers(bundle, timeout=TIMEOUT, request_ttl=5.0, **limits) as servers:
        yield model, servers


def _expected(model, x):
    return model.predict(x, verbose=0)


def _components(rows):
    from privkeras.backends.mpc.serving import share_rows
    from privkeras.core.fixed_point import FixedPointCodec

    return share_rows(FixedPointCodec().encode(rows), 2)


def _hexid(rng) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), size=32))


def test_malformed_requests_get_typed_errors_and_the_servers_keep_serving(served):
    import grpc

    model, servers = served
    rng = np.random.default_rng(1)
    transport = servers.processes.client("client")
    good = _components(X[:1])
    bad_values = [None, "", "zz" * 16, "A" * 32, 7, -1, 0, 2**70, True, 3.5, [], {}, "a" * 31]
    refused = 0
    try:
        for trial in range(240):
            meta = {"id": _hexid(rng), "ticket": _hexid(rng), "rows": 1, "enqueue": False}
            tensors = [good[1]]
            role = "p1"
            kind = trial % 8
            if kind < 4:  # one field of the wrong type, range or form
                field = ["id", "ticket", "rows", "enqueue"][kind]
                meta[field] = bad_values[int(rng.integers(len(bad_values)))]
                if field == "enqueue" and meta[field] is True:
                    meta[field] = "yes"
            elif kind == 4:  # wrong tensors: dtype, shape, count
                tensors = [
                    [good[1].astype(np.float64)],
                    [good[1].astype(np.int32)],
                    [good[1][:, :5]],
                    [good[1], good[1]],
                    [],
                ][trial % 5]
            elif kind == 5:  # the wrong server, or the wrong method
                role, meta["enqueue"] = ("dealer", False) if trial % 2 else ("p1", True)
            elif kind == 6:  # server-only methods from a client
                method = ["serve.start", "serve.cancel"][trial % 2]
                with pytest.raises(AuthenticationError):
                    transport.call("p1", method, meta={"requests": []}, job="j" * 32, timeout=5)
                refused += 1
                continue
            else:  # results that are not ours, and random bytes on the wire
                if trial % 2:
                    with pytest.raises(PartyError):
                        transport.call(
                            "p0", "serve.result", meta={"id": _hexid(rng), "ticket": "0" * 32},
                            timeout=5,
                        )  # fmt: skip
                else:
                    raw = bytes(
                        rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8)
                    )
                    stub = transport._stubs_for("p0").call
                    with pytest.raises(grpc.RpcError):
                        stub(raw, timeout=5, metadata=transport._metadata)
                refused += 1
                continue
            with pytest.raises(PrivkerasError):
                transport.call(role, "serve.submit", tensors, meta, timeout=5)
            refused += 1
        with pytest.raises(PrivkerasError, match=r"serve\.nope"):
            transport.call("p0", "serve.nope", timeout=5)
    finally:
        transport.close()
    assert refused == 240
    for role in servers.manifest.roles:
        assert servers.processes.children[role].alive(), role
    with servers.connect() as client:
        np.testing.assert_allclose(client.predict(X[:4]), _expected(model, X[:4]), atol=5e-3)


def test_oversized_and_too_frequent_requests_are_refused(served):
    model, servers = served
    transport = servers.processes.client("client")
    rng = np.random.default_rng(2)
    try:
        big = _components(X[:17])
        meta = {"id": _hexid(rng), "ticket": _hexid(rng), "rows": 17, "enqueue": False}
        with pytest.raises(InvalidInputError, match=r"rows in \[1, 16\]"):
            transport.call("p1", "serve.submit", [big[1]], meta, timeout=5)
        time.sleep(2.5)  # a full bucket
        rate_refusals = 0
        one = _components(X[:1])
        for _ in range(160):
            meta = {"id": _hexid(rng), "ticket": _hexid(rng), "rows": 1, "wait": False}
            try:
                transport.call("p1", "serve.submit", [one[1]], meta, timeout=5)
            except PartyError as error:
                assert "rate limit of 50 requests/s" in str(error)
                rate_refusals += 1
        assert rate_refusals >= 20
    finally:
        transport.close()
    time.sleep(2.5)
    with servers.connect() as client:  # 40 rows: the client sends requests of 16 rows at most
        np.testing.assert_allclose(client.predict(X), _expected(model, X), atol=5e-3)


def test_unauthenticated_clients_are_refused(served, tmp_path):
    from privkeras.net import Credentials, make_dev_certs

    _, servers = served
    make_dev_certs(tmp_path / "other", ["client"])
    foreign = Credentials.mutual_tls(
        tmp_path / "other" / "ca.pem", tmp_path / "other" / "client.pem",
        tmp_path / "other" / "client.key",
    )  # fmt: skip
    with pytest.raises(AuthenticationError):
        pk.serving.connect(servers.address, credentials=foreign, server="p0", timeout=5)
    for role in servers.manifest.roles:
        assert servers.processes.children[role].alive(), role


def test_a_dead_compute_party_fails_requests_in_time_and_the_others_serve_on(served):
    model, servers = served
    victim = servers.processes.children["p1"]
    outcome = {}

    def request():
        started = time.monotonic()
        try:
            with servers.connect(timeout=TIMEOUT) as client:
                outcome["y"] = client.predict(X[:2])
        except BaseException as error:  # checked below
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.1)  # the request waits in the front's queue for its batch
    victim.kill()
    thread.join(60)
    assert isinstance(outcome.get("error"), PartyError), outcome
    assert "p1" in str(outcome["error"])
    assert outcome["seconds"] < TIMEOUT + 5

    started = time.monotonic()  # a new request, with a deadline of its own
    with servers.connect(timeout=3.0) as client, pytest.raises(PartyError, match="p1"):
        client.predict(X[:2])
    assert time.monotonic() - started < 3.0 + 5
    health = servers.processes.client("client")
    try:
        assert health.health("p0") == "SERVING" and health.health("dealer") == "SERVING"
    finally:
        health.close()
    servers.processes.restart("p1")
    with servers.connect() as client:
        np.testing.assert_allclose(client.predict(X[:3]), _expected(model, X[:3]), atol=5e-3)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(served):
    """Last in this file: it stops the servers."""
    model, servers = served
    outcome = {}
    client = servers.connect()

    def request():
        try:
            outcome["y"] = client.predict(X[:5])
        except BaseException as error:  # checked below
            outcome["error"] = error

    transport = servers.processes.client("client")
    one = _components(X[:1])
    # A part nobody comes back for: p1 drains until its TTL (5 s), a window to knock in.
    meta = {"id": "e" * 32, "ticket": "f" * 32, "rows": 1, "wait": False}
    transport.call("p1", "serve.submit", [one[1]], meta, timeout=5)
    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.1)  # queued at the front, its inputs held by p1
    children = list(servers.processes.children.values())
    for child in children:
        os.killpg(child.pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 5
        while not transport.call("p1", "serve.stats", timeout=5).meta["draining"]:
            assert time.monotonic() < deadline, "p1 never started draining"
            time.sleep(0.02)
        meta = {"id": "9" * 32, "ticket": "f" * 32, "rows": 1, "wait": False}
        with pytest.raises(PartyError, match="shutting down"):
            transport.call("p1", "serve.submit", [one[1]], meta, timeout=5)
    finally:
        transport.close()
    thread.join(30)
    client.close()
    assert "error" not in outcome, outcome.get("error")
    np.testing.assert_allclose(outcome["y"], _expected(model, X[:5]), atol=5e-3)
    for child in children:
        assert child.popen.wait(30) == 0, child.log_tail()
