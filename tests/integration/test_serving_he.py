"""Serving an exported HE bundle: a `privkeras serve` process on loopback, mutual TLS, clients.

Two HE-friendly digits models (an MLP and a CNN with square activations,
trained in plaintext) are exported with `format="he"` and each served by its
own process (`pk.serving.local_servers`, always stopped). Each client makes
its own keys and registers its public context once; served predictions agree
with `model.predict` under `privacy="he"` (argmax) for a batch and one row;
one client's concurrent calls are coalesced into shared encrypted groups;
the server holds no secret key and refuses a context that carries one;
malformed requests get typed errors and the server serves on; a killed
server is a `PartyError` naming it within the deadline; SIGTERM lets the
request in flight finish and exits 0.
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
from privkeras import datasets
from privkeras.errors import InvalidInputError, PartyError, PrivkerasError
from privkeras.layers import PolynomialActivation

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

TIMEOUT = 30.0
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _export(model, data, path, blocks):
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS)
    model.fit(data.x_train, data.y_train, epochs=3, batch_size=64, verbose=0)
    model.compile(loss=LOSS, privacy="he")
    model.export(str(path), format="he", blocks=blocks)
    return model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    layers = [keras.Input((64,)), keras.layers.Dense(32), PolynomialActivation("square")]
    model = pk.PrivateSequential([*layers, keras.layers.Dense(10)])
    bundle = tmp_path_factory.mktemp("he") / "digits_mlp_he"
    model = _export(model, data, bundle, blocks=[16])
    expected = model.predict(data.x_test[:32], verbose=0)  # in process, under privacy="he"
    with pk.serving.local_servers(bundle, timeout=TIMEOUT, max_delay=0.02) as servers:
        yield expected, servers, data.x_test


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    data = datasets.digits(images=True)
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3),
            PolynomialActivation("square"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    bundle = tmp_path_factory.mktemp("he") / "digits_cnn_he"
    model = _export(model, data, bundle, blocks=[16])
    expected = model.predict(data.x_test[:32], verbose=0)
    with pk.serving.local_servers(bundle, timeout=TIMEOUT) as servers:
        yield expected, servers, data.x_test


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_served_predictions_agree_with_model_predict(which, request):
    expected, servers, x = request.getfixturevalue(which)
    with pk.serving.connect(servers.address, timeout=TIMEOUT) as client:
        batch = client.predict(x[:10])
        one = client.predict(x[10])
    assert batch.shape == (10, 10) and one.shape == (10,)
    assert (batch.argmax(1) == expected[:10].argmax(1)).all()
    assert one.argmax() == expected[10].argmax()
    stats = servers.stats()
    assert stats["holds_secret_key"] is False and stats["sessions"] == 0  # closed


def test_one_clients_concurrent_calls_share_encrypted_groups(mlp):
    expected, servers, x = mlp
    before = servers.stats()
    results, errors = {}, []
    with pk.serving.connect(servers.address, timeout=TIMEOUT) as client:

        def caller(k):
            try:
                results[k] = client.predict(x[k])
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors
    assert [results[k].argmax() for k in range(24)] == expected[:24].argmax(1).tolist()
    after = servers.stats()
    assert after["rows"] - before["rows"] == 24
    assert after["requests"] - before["requests"] < 24 and after["largest"] > 1


def test_the_server_refuses_secret_keys_and_malformed_requests_and_serves_on(mlp):
    from privkeras.backends.he import HEClient
    from privkeras.backends.he.params import CKKSParameters

    expected, servers, x = mlp
    transport = servers.processes.client("client")
    parameters = CKKSParameters.from_config(servers.manifest.data["he"]["parameters"])
    secret = HEClient(parameters).to_bytes(include_secret_key=True)
    rng = np.random.default_rng(0)
    try:
        with pytest.raises(InvalidInputError, match="public-context"):
            transport.call("server", "serve.register", [np.frombuffer(secret, np.uint8)])
        cases = [
            ("serve.register", {}, [rng.integers(0, 256, 500, dtype=np.uint8)]),
            ("serve.register", {}, [np.zeros((3, 3), np.uint8)]),
            ("serve.register", {}, [np.zeros(10, np.float32)]),
            ("serve.predict", {"session": "0" * 32, "block": 16}, [np.zeros(10, np.uint8)]),
            ("serve.predict", {"session": 5}, []),
            ("serve.spec", {"block": "x"}, []),
            ("serve.spec", {"block": 2}, []),
        ]
        for _ in range(20):
            for method, meta, tensors in cases:
                with pytest.raises(PrivkerasError):
                    transport.call("server", method, tensors, meta, timeout=10)
    finally:
        transport.close()
    assert servers.processes.children["server"].alive()
    with pk.serving.connect(servers.address, timeout=TIMEOUT) as client:
        y = client.predict(x[:3])
    assert (y.argmax(1) == expected[:3].argmax(1)).all()
    assert servers.stats()["holds_secret_key"] is False


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(cnn):
    """Stops the CNN's server: runs after the tests that use it."""
    expected, servers, x = cnn
    from privkeras.serving.local import CLIENT

    client = pk.serving.connect(servers.address, timeout=TIMEOUT)
    poller = servers.processes.client(CLIENT)  # one connection: a TLS handshake per poll is slow
    rows = len(expected)  # the largest batch the test checks: an evaluation long enough to see
    try:
        for _ in range(3):  # on a fast box a request can finish between two polls: send again
            outcome = {}

            def request(outcome=outcome):
                try:
                    outcome["y"] = client.predict(x[:rows])
                except BaseException as error:  # checked below
                    outcome["error"] = error

            thread = threading.Thread(target=request)
            thread.start()
            seen, deadline = False, time.monotonic() + 20
            while not seen and thread.is_alive() and time.monotonic() < deadline:
                seen = bool(poller.call("server", "serve.stats", timeout=10).meta["running"])
            if seen:
                break
            thread.join(60)
        assert seen, "the request was never seen evaluating"
        child = servers.processes.children["server"]
        os.killpg(child.pid, signal.SIGTERM)
        thread.join(60)
    finally:
        poller.close()
        client.close()
    assert "error" not in outcome, outcome.get("error")
    assert (outcome["y"].argmax(1) == expected.argmax(1)).all()
    assert child.popen.wait(30) == 0, child.log_tail()


def test_a_killed_server_is_a_party_error_in_time(mlp):
    """Kills the MLP's server: the last test of this file that uses it."""
    _, servers, x = mlp
    client = pk.serving.connect(servers.address, timeout=5.0)
    try:
        servers.processes.children["server"].kill()
        started = time.monotonic()
        with pytest.raises(PartyError, match="server"):
            client.predict(x[:2])
        assert time.monotonic() - started < 5.0 + 5
    finally:
        client.close()
