"""What the MPC engines reveal, and to whom, read from the runtime's reveal log.

- inference reveals only the outputs, to the caller;
- training reveals only the final weights, to the model owner;
- with several data owners, the model owner gets only the combined update,
  never one owner's gradient or update.
"""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk

pytestmark = [
    pytest.mark.filterwarnings("ignore:MPC\\(seed=:UserWarning"),
    pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer:UserWarning"),
]


def _model(seed=0, protocol="pond"):
    keras.utils.set_random_seed(seed)
    model = pk.PrivateSequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = pk.MPC(protocol=protocol, engine="torch", seed=seed)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model


def _log(model):
    return [(r.what, r.to, tuple(r.shape)) for r in model.engine.runtime.reveal_log]


WEIGHT_SHAPES = [
    ("dense/kernel", (4, 3)),
    ("dense/bias", (3,)),
    ("dense_1/kernel", (3, 2)),
    ("dense_1/bias", (2,)),
]


def _weight_names(model):
    return [
        (f"{layer.name}/{name}", shape)
        for layer in model.layers
        for name, shape in (
            ("kernel", tuple(layer.kernel.shape)),
            ("bias", tuple(layer.bias.shape)),
        )
    ]


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_inference_reveals_only_outputs_to_the_caller(protocol):
    model = _model(protocol=protocol)
    x = np.random.default_rng(0).normal(size=(10, 4))
    model.predict(x, batch_size=4, verbose=0)
    model.evaluate(x, np.zeros(10), batch_size=5, verbose=0)
    assert _log(model) == [
        ("predictions", "caller", (4, 2)),
        ("predictions", "caller", (4, 2)),
        ("predictions", "caller", (2, 2)),
        ("predictions", "caller", (5, 2)),
        ("predictions", "caller", (5, 2)),
    ]


def test_training_reveals_only_the_final_weights_to_the_model_owner():
    model = _model()
    rng = np.random.default_rng(1)
    model.fit(rng.normal(size=(12, 4)), rng.integers(0, 2, 12), batch_size=4, epochs=3, verbose=0)
    names = _weight_names(model)
    assert _log(model) == [(f"final weights {n}", "model_owner", s) for n, s in names]


def test_validation_reveals_only_validation_outputs_to_the_caller():
    model = _model()
    rng = np.random.default_rng(2)
    model.fit(
        rng.normal(size=(8, 4)),
        rng.integers(0, 2, 8),
        batch_size=4,
        epochs=2,
        validation_data=(rng.normal(size=(3, 4)), rng.integers(0, 2, 3)),
        verbose=0,
    )
    log = _log(model)
    assert log[:2] == [("validation predictions", "caller", (3, 2))] * 2
    assert all(to == "model_owner" and what.startswith("final weights") for what, to, _ in log[2:])


def test_multi_owner_training_gives_the_model_owner_only_the_combined_update():
    rng = np.random.default_rng(3)
    x_a, x_b = rng.normal(size=(6, 4)), rng.normal(size=(10, 4))
    y_a, y_b = rng.integers(0, 2, 6), rng.integers(0, 2, 10)
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    model.fit(
        pk.SharedData([(x_a, y_a), (x_b, y_b)], owners=["alice", "bob"]),
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
    )
    names = _weight_names(model)
    assert _log(model) == [(f"combined update {n}", "model_owner", s) for n, s in names]
    # Nothing is ever revealed to a data owner, and no reveal is per owner.
    assert not any(
        to in ("alice", "bob") or "alice" in what or "bob" in what for what, to, _ in _log(model)
    )
    # The update the model owner received is exactly the combined one: the
    # same model trained on the same (shared) batches by a single owner.
    single = _model()
    x, y = (
        np.concatenate([x_a[:3], x_b[:5], x_a[3:], x_b[5:]]),
        np.concatenate([y_a[:3], y_b[:5], y_a[3:], y_b[5:]]),
    )
    single.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b, w0 in zip(model.get_weights(), single.get_weights(), before):
        assert not np.allclose(a, w0)
        np.testing.assert_allclose(a, b, atol=2e-3)
