"""Engine-level one protocol code: `predict`, `evaluate` and `fit` with every party on its own thread.

The driver (this thread) holds only the caller's, the model owner's and the
data owners' roles; every compute party and Pond's dealer run `party.run_job`
on a thread of their own, knowing the job only from its `JobSpec`. Outputs,
trained weights, rounds and bytes must equal the in-process run with the
same seed, bit for bit.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.mpc.cluster import ThreadCluster
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.errors import PartyError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 6)).astype(np.float32)
Y = keras.utils.to_categorical(RNG.integers(0, 3, size=20), 3)


def _model(protocol, engine="torch", seed=5, unseeded=False):
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
        privacy=pk.MPC(protocol=protocol, engine=engine, seed=None if unseeded else seed),
    )
    return model


def _threaded(model):
    model.engine.cluster = ThreadCluster(timeout=20)
    return model


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_predict_and_evaluate_on_threads_equal_in_process(protocol):
    local = _model(protocol)
    expected = local.predict(X, batch_size=8, verbose=0)
    expected_stats = local.engine.runtime.communicator.snapshot()
    threaded = _threaded(_model(protocol))
    got = threaded.predict(X, batch_size=8, verbose=0)
    np.testing.assert_array_equal(got, expected)
    report = threaded.engine.last_report
    assert report.stats.rounds == expected_stats.rounds
    assert report.stats.bytes_per_party == expected_stats.bytes_per_party
    assert report.stats.offline_bytes == expected_stats.offline_bytes
    # The parties never saw a revealed value; the driver's log is the in-process log.
    assert [(r.what, r.to) for r in report.reveal_logs["driver"]] == [
        (r.what, r.to) for r in local.engine.runtime.reveal_log
    ]
    logs = threaded.evaluate(X, Y, batch_size=8, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_fit_on_threads_equals_in_process(protocol):
    local = _model(protocol)
    history = local.fit(X, Y, batch_size=8, epochs=2, verbose=0, validation_data=(X[:6], Y[:6]))
    threaded = _threaded(_model(protocol))
    got = threaded.fit(X, Y, batch_size=8, epochs=2, verbose=0, validation_data=(X[:6], Y[:6]))
    for a, b in zip(local.get_weights(), threaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert got.history.keys() == history.history.keys()
    np.testing.assert_allclose(got.history["val_loss"], history.history["val_loss"])
    assert threaded.engine.last_report.stats.rounds == local.engine.runtime.communicator.rounds


def test_early_stopping_reaches_the_parties():
    threaded = _threaded(_model("pond"))
    stop = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(threaded, "stop_training", True)
    )
    history = threaded.fit(X, Y, batch_size=10, epochs=5, verbose=0, callbacks=[stop])
    assert len(history.epoch) == 1  # and no party waits for a second epoch


def test_unseeded_jobs_agree_fresh_keys():
    threaded = _threaded(_model("aby3", unseeded=True))
    local = _model("aby3")
    got = threaded.predict(X, batch_size=10, verbose=0)
    np.testing.assert_allclose(got, local.predict(X, batch_size=10, verbose=0), atol=2e-3)


def test_a_job_spec_round_trips_and_refuses_garbage():
    model = _model("pond")
    program = model.engine.lower(model, (6,), training=False)
    spec = model.engine.predict_job(model, program, 20, 8, "predictions")
    assert JobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(pk.errors.PrivkerasError):
        JobSpec.from_json(b"\xff\x00")
    with pytest.raises(ValueError, match="format"):
        JobSpec.from_json('{"format": 99}')
    with pytest.raises(ValueError, match="batch_size"):
        JobSpec.from_json(spec.to_json().replace('"batch_size": 8', '"batch_size": -1'))


def test_a_failing_party_is_a_party_error():
    threaded = _threaded(_model("pond"))
    threaded.engine.cluster.timeout = 2
    with pytest.raises(PartyError):
        # The parties cannot rebuild a model whose JSON was corrupted on the way.
        original = threaded.engine.predict_job

        def corrupted(*args):
            spec = original(*args)
            return JobSpec(**{**spec.__dict__, "model": "{not json"})

        threaded.engine.predict_job = corrupted
        threaded.predict(X, batch_size=10, verbose=0)
