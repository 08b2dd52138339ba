"""Serving an exported MPC bundle: `privkeras serve` processes on loopback, mutual TLS, clients.

Two bundles are served, each by its own processes (started and always
stopped by `pk.serving.local_servers`): a digits MLP under Pond (p0, p1 and
the dealer) and a digits CNN under ABY3 (p0, p1, p2). A client's served
predictions must equal the model owner's in-process `model.predict` under
the same policy (the engine's tolerance), for a batch and for one row;
concurrent clients are batched into shared jobs, each getting its own rows'
outputs only; every party's reveal log names clients only; a client that
goes away is forgotten after the request TTL; a client that skips a party
gets a typed error while the others in its batch are served.
"""

from __future__ import annotations

import re
import threading
import time

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras import datasets
from privkeras.errors import InvalidInputError, PartyError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

TIMEOUT = 20.0
TTL = 3.0


def _trained(model, x, y, protocol):
    keras.utils.set_random_seed(0)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        privacy=pk.MPC(protocol=protocol),
    )
    return model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model = _trained(model, data.x_train, data.y_train, "pond")
    bundle = tmp_path_factory.mktemp("serving") / "digits_mlp"
    model.export(str(bundle), format="mpc")
    with pk.serving.local_servers(
        bundle, tls=True, timeout=TIMEOUT, request_ttl=TTL, max_delay=0.02
    ) as servers:
        yield model, servers, data.x_test


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    data = datasets.digits(images=True)
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model = _trained(model, data.x_train, data.y_train, "aby3")
    bundle = tmp_path_factory.mktemp("serving") / "digits_cnn"
    model.export(str(bundle), format="mpc")
    with pk.serving.local_servers(bundle, tls=True, timeout=TIMEOUT) as servers:
        yield model, servers, data.x_test


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_served_predictions_equal_model_predict(which, request):
    model, servers, x = request.getfixturevalue(which)
    assert set(servers.pids) == set(servers.manifest.roles)
    with pk.serving.connect(servers.address) as client:
        batch = client.predict(x[:12])
        one = client.predict(x[12])
    expected = model.predict(x[:13], verbose=0)
    assert batch.shape == (12, 10) and one.shape == (10,)
    np.testing.assert_allclose(batch, expected[:12], atol=5e-3)
    np.testing.assert_allclose(one, expected[12], atol=5e-3)
    assert (batch.argmax(1) == expected[:12].argmax(1)).all()


def test_connect_with_the_manifest_checks_the_servers_serve_it(mlp, tmp_path):
    model, servers, x = mlp
    credentials = servers.processes.credentials("client")
    manifest = servers.manifest.root / "manifest.json"
    with pk.serving.connect(manifest, cluster=servers.addresses, credentials=credentials) as client:
        np.testing.assert_allclose(
            client.predict(x[:2]), model.predict(x[:2], verbose=0), atol=5e-3
        )
    other = tmp_path / "other"
    model.export(str(other), format="mpc")  # the same model, shared afresh: another bundle
    with pytest.raises(pk.serving.BundleError, match="serve the bundle"):
        pk.serving.connect(other, cluster=servers.addresses, credentials=credentials)


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(mlp):
    model, servers, x = mlp
    before = servers.stats()
    results, errors = {}, []

    def one_client(k):
        try:
            with servers.connect() as client:
                for r in range(2):
                    rows = x[4 * k + 2 * r : 4 * k + 2 * r + 2]
                    results[k, r] = (rows, client.predict(rows))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for rows, got in results.values():
        np.testing.assert_allclose(got, model.predict(rows, verbose=0), atol=5e-3)
    after = servers.stats()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 40
    assert batches < requests and after["largest"] > 1, (batches, after)


def test_reveal_logs_name_clients_only_and_logs_hold_no_ring_values(mlp):
    _, servers, x = mlp
    with servers.connect() as client:
        client.predict(x[:3])
    for role in servers.manifest.roles:
        stats = servers.stats(role)
        if role == "dealer":
            assert stats["reveals"] == [], "the dealer sends clients nothing"
            continue
        assert stats["reveals"], role
        for what, to, shape in stats["reveals"]:
            assert what == "predictions" and to.startswith("client:client/"), (role, to)
            assert shape[1:] == [10]
        log = servers.processes.children[role].log_tail(1 << 20)
        assert not re.search(r"-?\d{12,}", log), f"{role}'s log shows a ring value"


def test_a_client_that_goes_away_is_forgotten_and_one_that_skips_a_party_is_refused(mlp):
    from privkeras.backends.mpc.serving import share_rows
    from privkeras.core.fixed_point import FixedPointCodec

    model, servers, x = mlp
    transport = servers.processes.client("client")
    components = share_rows(FixedPointCodec().encode(x[:1]), 2)
    try:
        # Submitted to p1, then gone: p1 holds it until the TTL, then drops it.
        meta = {"id": "a" * 32, "ticket": "b" * 32, "rows": 1, "wait": False}
        transport.call("p1", "serve.submit", [components[1]], meta, timeout=5)
        assert servers.stats("p1")["held_requests"] == 1
        deadline = time.monotonic() + TTL + 5
        while servers.stats("p1")["held_requests"] and time.monotonic() < deadline:
            time.sleep(0.25)
        assert servers.stats("p1")["held_requests"] == 0
        assert servers.stats("p1")["held_bytes"] == 0

        # Waiting at p1 for a batch that never comes, then gone (its deadline passed):
        # p1 lets the part go at once, not at the TTL.
        meta = {"id": "e" * 32, "ticket": "f" * 32, "rows": 1}
        with pytest.raises(PartyError):
            transport.call("p1", "serve.submit", [components[1]], meta, timeout=0.5)
        deadline = time.monotonic() + 1.5
        while servers.stats("p1")["held_requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert servers.stats("p1")["held_requests"] == 0

        # Enqueued at the front without sending p1 its part, while a good client asks too.
        good = {}

        def good_client():
            with servers.connect() as client:
                good["y"] = client.predict(x[1:3])

        thread = threading.Thread(target=good_client)
        thread.start()
        meta = {"id": "c" * 32, "ticket": "d" * 32, "rows": 1, "enqueue": True}
        with pytest.raises(PartyError, match="'p1' has no inputs of request"):
            transport.call("p0", "serve.submit", [components[0]], meta, timeout=TIMEOUT)
        thread.join(60)
        np.testing.assert_allclose(good["y"], model.predict(x[1:3], verbose=0), atol=5e-3)

        with servers.connect() as client, pytest.raises(InvalidInputError, match="shape"):
            client.predict(x[:2, :10])
    finally:
        transport.close()
    assert servers.stats("p0")["held_requests"] == 0
