"""The MPC engines from the user's side: routing, private inference, evaluation, refusals.

Oracle: the same model run by plain Keras. Accuracy targets of issue 4 (default
16 fractional bits): on the digits test split, private inference agrees with
plaintext argmax on >= 99% of rows with logits within 0.01.
"""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras import datasets
from privkeras.backends import registry
from privkeras.backends.mpc import runtime as mpc_runtime
from privkeras.errors import (
    EngineNotAvailableError,
    InvalidInputError,
    PrecisionOverflowError,
    UnsupportedLayerError,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:MPC\\(seed=:UserWarning"),
    pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer:UserWarning"),
]

LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mpc(**kwargs) -> pk.MPC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.MPC(**kwargs)


def _trained(layers, data, epochs):
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOGITS, metrics=["accuracy"]
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def digits():
    return datasets.digits()


@pytest.fixture(scope="module")
def mlp(digits):
    return _trained(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ],
        digits,
        epochs=8,
    )


@pytest.fixture(scope="module")
def cnn():
    data = datasets.digits(images=True)
    model = _trained(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(2, strides=1, padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ],
        data,
        epochs=6,
    )
    return model, data


def _private(model, policy):
    model.compile(loss=LOGITS, metrics=["accuracy"], privacy=policy)
    return model


@pytest.mark.multi_backend
def test_engines_are_registered_per_variant_and_follow_the_keras_backend(keras_backend):
    engines = registry.available_engines()
    assert (engines["mpc-tfe"].variant, engines["mpc-tfe"].kernels) == ("tfe", "tensorflow")
    assert (engines["mpc-torch"].variant, engines["mpc-torch"].kernels) == ("torch", "torch")
    default = registry.get_engine(mpc(), keras_backend)
    assert default.native_backend == keras_backend
    for variant in ("tfe", "torch"):
        assert registry.get_engine(mpc(engine=variant), keras_backend).variant == variant


def test_a_missing_protocol_lists_the_existing_combinations():
    aby3 = mpc_runtime.get_protocol("aby3")
    policy = mpc(protocol="aby3", engine="tfe")  # valid when made; the protocol then goes
    mpc_runtime.PROTOCOLS.unregister("aby3")
    try:
        model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(1)])
        with pytest.raises(EngineNotAvailableError, match=r"aby3.*tfe.*pond\+tfe.*pond\+torch"):
            model.compile(loss="mse", privacy=policy)
    finally:
        mpc_runtime.register_protocol(aby3)


@pytest.mark.multi_backend
@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_private_mlp_inference_matches_keras_on_digits(mlp, digits, protocol):
    expected = mlp.keras_predict(digits.x_test, verbose=0)
    _private(mlp, mpc(protocol=protocol, seed=0))
    got = mlp.predict(digits.x_test, batch_size=150, verbose=0)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.max(np.abs(got - expected)) < 0.01


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_private_cnn_inference_matches_keras_on_digits(cnn, protocol):
    model, data = cnn
    expected = model.keras_predict(data.x_test, verbose=0)
    _private(model, mpc(protocol=protocol, seed=0))
    got = model.predict(data.x_test, batch_size=150, verbose=0)
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.max(np.abs(got - expected)) < 0.01


def test_softmax_outputs_and_evaluate_metrics_match_keras(digits):
    keras.utils.set_random_seed(1)
    model = pk.PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
    x, y = digits.x_test[:200], digits.y_test[:200]
    expected_outputs = model.keras_predict(x, verbose=0)
    expected = model.keras_evaluate(x, y, verbose=0, return_dict=True)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"], privacy=mpc(seed=2))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected_outputs, atol=0.01)
    got = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert set(got) == set(expected)
    assert got["loss"] == pytest.approx(expected["loss"], abs=0.01)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=0.01)
    as_list = model.evaluate(x, y, batch_size=64, verbose=0)
    assert len(as_list) == 2 and as_list[0] == pytest.approx(expected["loss"], abs=0.01)


def test_predict_drives_keras_callbacks_and_progress_bar(capsys):
    class Batches(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_predict_begin(self, logs=None):
            self.events.append("begin")

        def on_predict_batch_end(self, batch, logs=None):
            self.events.append((batch, logs["outputs"].shape))

        def on_predict_end(self, logs=None):
            self.events.append("end")

    model = pk.PrivateSequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=mpc(seed=0))
    recorder = Batches()
    model.predict(np.ones((10, 4)), batch_size=4, verbose=1, callbacks=[recorder])
    assert recorder.events == ["begin", (0, (4, 2)), (1, (4, 2)), (2, (2, 2)), "end"]
    assert "3/3" in capsys.readouterr().out  # Keras's progress bar


def _untouched(model) -> bool:
    runtime = model.engine._runtime
    return runtime is None or (runtime.communicator.rounds == 0 and not runtime.reveal_log)


def test_unsupported_layers_are_refused_at_compile_before_any_work():
    model = pk.PrivateSequential(
        [keras.Input((5, 3)), keras.layers.LSTM(2, name="recurrent"), keras.layers.Dense(1)]
    )
    with pytest.raises(UnsupportedLayerError, match=r"'recurrent' \(LSTM\).*'mpc-"):
        model.compile(loss="mse", privacy=mpc(seed=0))


def test_unbuilt_models_are_checked_when_first_used():
    model = pk.PrivateSequential([keras.layers.Dense(2, activation="elu", name="elu_dense")])
    model.compile(loss="mse", privacy=mpc(seed=0))
    with pytest.raises(UnsupportedLayerError, match=r"'elu_dense'.*'elu'"):
        model.predict(np.ones((2, 3)), verbose=0)
    assert _untouched(model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_before_sharing(bad):
    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=mpc(seed=0))
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(InvalidInputError, match=r"finite.*index \(2, 1\)"):
        model.predict(x, verbose=0)
    assert _untouched(model)


def test_values_beyond_the_fixed_point_range_name_the_layer():
    model = pk.PrivateSequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="first"),
            keras.layers.Dense(2, name="blowup"),
        ]
    )
    model.layers[1].kernel.assign(np.full((4, 2), 3e4))
    model.compile(loss="mse", privacy=mpc(seed=0))
    model.predict(np.ones((2, 3)) * 0.1, verbose=0)  # fits
    model.engine.runtime.reveal_log.clear()
    model.engine.runtime.communicator.reset()
    with pytest.raises(PrecisionOverflowError, match="'blowup' \\(Dense\\)"):
        model.predict(np.ones((2, 3)) * 1e4, verbose=0)
    assert _untouched(model)


def test_wrong_input_shapes_are_refused():
    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=mpc(seed=0))
    with pytest.raises(ValueError, match=r"shape \(None, 3\).*\(4, 5\)"):
        model.predict(np.ones((4, 5)), verbose=0)


def test_bad_inputs_raise_the_typed_mpc_error():
    from privkeras.backends.mpc.errors import MPCInputError

    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=mpc(seed=0))
    with pytest.raises(InvalidInputError, match=r"shape \(None, 3\).*\(4, 5\)"):
        model.predict(np.ones((4, 5)), verbose=0)
    with pytest.raises(MPCInputError, match="Received: y=None"):
        model.evaluate(np.ones((4, 3)), None, verbose=0)
    with pytest.raises(InvalidInputError, match=r"same number of rows\. Received: .*\(3, 2\)"):
        model.evaluate(np.ones((4, 3)), np.ones((3, 2)), verbose=0)
    with pytest.raises(InvalidInputError, match="batch_size"):
        model.predict(np.ones((4, 3)), batch_size=0, verbose=0)


def test_shared_weights_are_reused_until_the_weights_change():
    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=mpc(seed=0))
    x = np.ones((2, 3))
    model.predict(x, verbose=0)
    first = model.engine.runtime.communicator.bytes_sent
    model.predict(x, verbose=0)
    second = model.engine.runtime.communicator.bytes_sent - first
    assert second < first  # the weights were not shared again
    model.layers[0].bias.assign([1.0, -1.0])
    np.testing.assert_allclose(
        model.predict(x, verbose=0), model.keras_predict(x, verbose=0), atol=1e-3
    )


def _run_engine(variant, protocol, train):
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.3, momentum=0.5),
        loss="sparse_categorical_crossentropy",
        privacy=mpc(protocol=protocol, engine=variant, seed=11),
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6, 6, 1)), rng.integers(0, 3, 8)
    if train:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return model.get_weights()
    return [model.predict(x, verbose=0)]


@pytest.mark.multi_backend
@pytest.mark.parametrize("protocol", ["pond", "aby3"])
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training-step"])
def test_tfe_and_torch_engines_are_bit_identical_with_the_same_seed(protocol, train):
    tfe = _run_engine("tfe", protocol, train)
    torch = _run_engine("torch", protocol, train)
    for a, b in zip(tfe, torch):
        np.testing.assert_array_equal(a, b)
