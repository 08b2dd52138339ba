"""`PolynomialActivation` under MPC: inference and training against plain Keras (the oracle).

Tolerances are the engine's (tests/backends/mpc/test_engine.py and
test_training.py): outputs within 0.01 of Keras, argmax agreement >= 99% on
digits, SGD updates within 2% (+2e-4) of Keras's.
"""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras import datasets
from privkeras.backends.mpc.layers import SecureProgram
from privkeras.backends.mpc.layers.activations import SecureReLU
from privkeras.backends.mpc.layers.polynomial import SecurePolynomial, horner_bounds
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.core.fixed_point import FixedPointCodec
from privkeras.errors import PrecisionOverflowError
from privkeras.layers import PolynomialActivation

pytestmark = [
    pytest.mark.filterwarnings("ignore:MPC\\(seed=:UserWarning"),
    pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer:UserWarning"),
]

LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mpc(**kwargs) -> pk.MPC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.MPC(**kwargs)


def _layers():
    return [
        keras.Input((64,)),
        keras.layers.Dense(24),
        PolynomialActivation("square", name="square"),
        keras.layers.Dense(16),
        PolynomialActivation("tanh", degree=3, input_range=(-3, 3), name="tanh3"),
        keras.layers.Dense(10),
    ]


@pytest.fixture(scope="module")
def trained():
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9), loss=LOGITS)
    model.fit(data.x_train, data.y_train, epochs=4, batch_size=32, verbose=0)
    return model, data


def test_polynomials_lower_to_a_secure_layer_with_their_coefficients():
    model = keras.Sequential(_layers())
    program = SecureProgram.lower(model, "mpc-test", training=True)
    polynomials = [layer for layer in program.layers if isinstance(layer, SecurePolynomial)]
    assert [p.name for p in polynomials] == ["square", "tanh3"]
    np.testing.assert_array_equal(polynomials[0].coefficients, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(polynomials[1].coefficients, model.layers[3].coefficients)
    np.testing.assert_array_equal(polynomials[0].derivative, [0.0, 2.0])
    assert program.last_activation is None  # a polynomial output is a linear output to losses


def test_polynomial_bounds_are_worst_cases_and_refuse_what_cannot_fit():
    coefficients = [0.5, -2.0, 0.0, 0.25]
    value, product = horner_bounds(coefficients, 3.0)
    x = np.linspace(-3, 3, 1001)
    assert np.max(np.abs(np.polynomial.polynomial.polyval(x, coefficients))) <= value
    assert value == pytest.approx(0.5 + 2 * 3 + 0.25 * 27)
    assert product == pytest.approx((0.25 * 3 * 3 + 2) * 3)
    assert horner_bounds([2.0], 1e9) == (2.0, 0.0)
    model = keras.Sequential([keras.Input((2,)), PolynomialActivation([0, 0, 0, 1], name="cube")])
    program = SecureProgram.lower(model, "mpc-test")
    program.check_range(100.0, FixedPointCodec())  # 100^3 fits 2^30 before truncation
    with pytest.raises(PrecisionOverflowError, match="'cube' \\(PolynomialActivation\\)"):
        program.check_range(2000.0, FixedPointCodec())


@pytest.mark.multi_backend
@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_private_inference_matches_keras_on_digits(trained, protocol):
    model, data = trained
    expected = model.keras_predict(data.x_test, verbose=0)
    model.compile(loss=LOGITS, privacy=mpc(protocol=protocol, seed=0))
    got = model.predict(data.x_test, batch_size=150, verbose=0)
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.max(np.abs(got - expected)) < 0.01
    assert np.mean(expected.argmax(1) == data.y_test) > 0.85  # a real model, not noise


@pytest.mark.multi_backend
@pytest.mark.parametrize(
    "head, loss, labels",
    [
        (lambda: [keras.layers.Dense(2)], "mse", "real"),
        (
            lambda: [keras.layers.Dense(3, activation="softmax")],
            "categorical_crossentropy",
            "onehot",
        ),
        (lambda: [keras.layers.Dense(2), PolynomialActivation([0.5, 0.3])], "mse", "real"),
    ],
    ids=["mse", "softmax-ce", "affine-output"],
)
def test_encrypted_training_steps_match_keras_updates(head, loss, labels):
    def layers():
        return [
            keras.Input((6,)),
            keras.layers.Dense(5),
            PolynomialActivation("square"),
            keras.layers.Dense(4),
            PolynomialActivation([0.1, 0.5, 0.0, -0.05]),
            *head(),
        ]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    models = []
    for privacy in (None, mpc(seed=3)):
        keras.utils.set_random_seed(1)
        model = pk.PrivateSequential(layers())
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss=loss, privacy=privacy)
        models.append(model)
    plain, secure = models
    out = plain.output_shape[-1]
    y = np.eye(out)[rng.integers(0, out, 16)] if labels == "onehot" else rng.normal(size=(16, out))
    initial = plain.get_weights()
    for model in (plain, secure):
        model.fit(x, y.astype("float32"), batch_size=16, epochs=3, shuffle=False, verbose=0)
    for w0, expected, got in zip(initial, plain.get_weights(), secure.get_weights()):
        update = np.abs(expected - w0).max()
        assert update > 0
        assert np.abs((got - w0) - (expected - w0)).max() <= 0.02 * update + 2e-4


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_square_costs_fewer_rounds_than_relu(protocol):
    runtime = MPCRuntime(protocol, kernels="numpy", seed=0)
    a = np.linspace(-2, 2, 12).reshape(3, 4)
    x, upstream = runtime.share(a), runtime.share(a[::-1])
    oracles = {"square": (a**2, a[::-1] * 2 * a), "relu": (np.maximum(a, 0), a[::-1] * (a > 0))}
    rounds = {}
    for layer in (SecurePolynomial("square", (4,), [0, 0, 1]), SecureReLU("relu", (4,))):
        before = runtime.communicator.rounds
        y, cache = layer.forward(x, {}, training=True)
        grad, _ = layer.backward(upstream, cache, {})
        rounds[layer.name] = runtime.communicator.rounds - before
        forward, backward = oracles[layer.name]
        assert np.max(np.abs(y.reveal() - forward)) < 1e-3
        assert np.max(np.abs(grad.reveal() - backward)) < 1e-3
    assert rounds["square"] < rounds["relu"]
    if protocol == "pond":
        assert rounds["square"] == 2  # x * x forward, upstream * 2x backward
