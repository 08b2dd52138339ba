"""MPC across real processes: `privkeras party` processes on loopback, mutual TLS, faults.

Every party runs in its own process (started and always stopped here, via
`pk.mpc.local_cluster`); the test process is the driver. A networked job must
give the in-process results bit for bit, with the same rounds and bytes; a
killed party must make the job fail with a `PartyError` naming it, in time,
and the parties that survive must serve the next job.
"""

from __future__ import annotations

import contextlib
import threading
import time

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.errors import AuthenticationError, PartyError, PrivacyPolicyError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 6)).astype(np.float32)
Y = keras.utils.to_categorical(RNG.integers(0, 3, size=24), 3)
TIMEOUT = 20.0


@pytest.fixture(scope="module", params=["pond", "aby3"])
def cluster(request):
    with pk.mpc.local_cluster(request.param, tls=True, timeout=TIMEOUT) as running:
        yield running


def _model(policy):
    keras.utils.set_random_seed(1)
    model = pk.PrivateSequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.2, momentum=0.5),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model


@pytest.mark.parametrize("engine", ["torch", "tfe"])
def test_networked_predict_and_fit_equal_in_process(cluster, engine):
    local = _model(pk.MPC(protocol=cluster.protocol, engine=engine, seed=7))
    remote = _model(cluster.policy(engine=engine, seed=7, timeout=TIMEOUT))

    expected = local.predict(X, batch_size=8, verbose=0)
    np.testing.assert_array_equal(remote.predict(X, batch_size=8, verbose=0), expected)
    report, stats = remote.engine.last_report, local.engine.runtime.communicator.snapshot()
    assert report.stats.rounds == stats.rounds
    assert report.stats.bytes_per_party == stats.bytes_per_party
    assert report.stats.offline_bytes == stats.offline_bytes
    # Each party kept its own reveal log: it revealed to the caller and received nothing.
    for role in cluster.parties:
        assert {r.to for r in report.reveal_logs[role]} == {"caller"}

    local_fit = _model(pk.MPC(protocol=cluster.protocol, engine=engine, seed=7))
    remote_fit = _model(cluster.policy(engine=engine, seed=7, timeout=TIMEOUT))
    local_fit.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    history = remote_fit.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(local_fit.get_weights(), remote_fit.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history.epoch == [0]


def test_unseeded_jobs_agree_keys_and_stay_correct(cluster):
    remote = _model(cluster.policy(engine="torch", timeout=TIMEOUT))
    plain = keras.Sequential.from_config(remote.get_config())
    plain.set_weights(remote.get_weights())
    np.testing.assert_allclose(
        remote.predict(X, batch_size=12, verbose=0), plain.predict(X, verbose=0), atol=5e-3
    )


def test_a_killed_party_fails_the_job_in_time_and_the_others_serve_the_next(cluster):
    victim = "p1"
    model = _model(cluster.policy(engine="torch", seed=3, timeout=TIMEOUT))
    killed_at = {}

    def kill_after_first_batch(batch, logs):
        if batch == 0 and not killed_at:
            cluster.processes.children[victim].kill()
            killed_at["t"] = time.monotonic()

    callback = keras.callbacks.LambdaCallback(on_train_batch_end=kill_after_first_batch)
    with pytest.raises(PartyError, match=victim):
        model.fit(X, Y, batch_size=4, epochs=3, verbose=0, callbacks=[callback])
    assert time.monotonic() - killed_at["t"] < TIMEOUT + 5

    survivors = [name for name in cluster.parties if name != victim]
    client = cluster.processes.client()
    try:
        for name in survivors:
            assert client.health(name) == "SERVING"
    finally:
        client.close()
    cluster.processes.restart(victim)
    fresh = _model(cluster.policy(engine="torch", seed=3, timeout=TIMEOUT))
    assert fresh.predict(X[:4], batch_size=4, verbose=0).shape == (4, 3)


def test_jobs_run_concurrently(cluster):
    models = [_model(cluster.policy(engine="torch", seed=s, timeout=TIMEOUT)) for s in (1, 2)]
    outputs, errors = {}, []

    def run(index):
        try:
            outputs[index] = models[index].predict(X, batch_size=6, verbose=0)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    local = _model(pk.MPC(protocol=cluster.protocol, engine="torch", seed=2))
    np.testing.assert_array_equal(outputs[1], local.predict(X, batch_size=6, verbose=0))


def test_a_driver_without_the_clusters_certificate_is_refused(cluster, tmp_path):
    from privkeras.backends.mpc.network import NetworkCluster, use_credentials
    from privkeras.net import Credentials, make_dev_certs

    make_dev_certs(tmp_path, ["driver"])  # another CA: the parties do not trust it
    stranger = Credentials.mutual_tls(
        tmp_path / "ca.pem", tmp_path / "driver.pem", tmp_path / "driver.key"
    )
    model = _model(cluster.policy(engine="torch", seed=3, timeout=TIMEOUT))
    with use_credentials(stranger, cluster.parties):
        model.engine.cluster = NetworkCluster(model.privacy, credentials=stranger)
        with pytest.raises(AuthenticationError):
            model.predict(X, batch_size=8, verbose=0)


def test_wrong_cluster_maps_are_refused_before_any_share(cluster):
    from privkeras.backends.mpc.network import use_credentials

    with pytest.raises(PrivacyPolicyError, match="parties"):
        pk.MPC(protocol=cluster.protocol, parties={"p0": "127.0.0.1:1"})
    addresses = dict(cluster.parties)
    addresses["p0"] = "127.0.0.1:9"  # nothing listens there
    model = _model(pk.MPC(protocol=cluster.protocol, parties=addresses, seed=1, timeout=2))
    started = time.monotonic()
    credentials = cluster.processes.credentials("driver")
    with use_credentials(credentials, addresses), pytest.raises(PartyError, match="p0"):
        model.predict(X, batch_size=8, verbose=0)
    assert time.monotonic() - started < 2 + 5


def test_malformed_jobs_get_typed_errors_and_the_parties_keep_serving(cluster):
    from privkeras.errors import PrivkerasError
    from privkeras.net import new_job_id

    model = _model(cluster.policy(engine="torch", seed=5, timeout=TIMEOUT))
    program = model.engine.lower(model, (6,), training=False)
    spec = model.engine.predict_job(model, program, 8, 8, "predictions").to_json().encode()
    rng = np.random.default_rng(11)
    client = cluster.processes.client()
    refused, jobs = 0, []
    try:
        for trial in range(300):
            data = bytearray(spec)
            kind = trial % 4
            if kind == 0:  # truncated
                data = data[: int(rng.integers(0, len(data)))]
            elif kind == 1:  # flipped bits
                for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                    data[position] ^= 1 << int(rng.integers(0, 8))
            elif kind == 2:  # random bytes
                data = bytearray(
                    rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8)
                )
            else:  # wrong types and values in otherwise valid JSON
                field = rng.choice(
                    [b'"rows": 8', b'"batch_size": 8', b'"protocol": "', b'"kind": "']
                )
                data = data.replace(field, field[:-1] + b'["x"]', 1)
            role = list(cluster.parties)[trial % 3]
            job = new_job_id()
            jobs.append((role, job))
            try:
                client.call(role, "mpc.start", [np.frombuffer(bytes(data), np.uint8)], job=job)
            except PrivkerasError:
                refused += 1
        for method, meta in (
            ("mpc.pull", {"seq": -1}),
            ("mpc.pull", {"seq": "x"}),
            ("mpc.finish", {}),
        ):
            with pytest.raises(PrivkerasError):
                client.call("p0", method, meta=meta, job="no-such-job", timeout=3)
    finally:
        for role, job in jobs:  # a mutation may have left a valid job waiting for us
            with contextlib.suppress(PrivkerasError):
                client.call(role, "mpc.abort", meta={"reason": "fuzz"}, job=job, timeout=2)
        client.close()
    assert refused >= 250
    local = _model(pk.MPC(protocol=cluster.protocol, engine="torch", seed=5))
    np.testing.assert_array_equal(
        model.predict(X, batch_size=8, verbose=0), local.predict(X, batch_size=8, verbose=0)
    )


def test_party_logs_hold_no_share_or_secret_value(cluster):
    import re

    children = cluster.processes.children
    # Only what this job wrote: the fuzz test above feeds the parties malformed specs, and a
    # refusal rightly quotes the sender's own bad field (which may be a long number).
    before = {name: len(children[name].log_tail(1 << 22)) for name in cluster.parties}
    model = _model(cluster.policy(engine="torch", seed=9, timeout=TIMEOUT))
    model.predict(X, batch_size=8, verbose=0)
    for name in cluster.parties:
        log = children[name].log_tail(1 << 22)[before[name] :]
        assert "job" in log  # the log does speak of jobs...
        # ...but never of ring values: shares and masks are uniform 64-bit words, printed as
        # whole numbers of 15 to 20 digits (a framework's float, 0.20000000298023224, is not,
        # nor is a run of digits inside a hex job id, 3f9094460916187899ab...).
        found = re.search(r"(?<![\w.])-?\d{15,20}(?![\w.])", log)
        assert not found, (name, log[max(0, found.start() - 400) : found.end() + 100])


def test_parties_started_by_hand_refuse_seeded_jobs():
    """A seed derives every key: a party process takes such jobs only if told it runs tests."""
    with pk.mpc.local_cluster("pond", allow_seeded_jobs=False, timeout=TIMEOUT) as strict:
        seeded = _model(strict.policy(engine="torch", seed=1, timeout=TIMEOUT))
        with pytest.raises(PartyError, match="seed"):
            seeded.predict(X, batch_size=8, verbose=0)
        unseeded = _model(strict.policy(engine="torch", timeout=TIMEOUT))
        assert unseeded.predict(X, batch_size=8, verbose=0).shape == (len(X), 3)
