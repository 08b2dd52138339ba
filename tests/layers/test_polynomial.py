"""PolynomialActivation: values against numpy, fits against the target functions,
serialization and training, on every Keras backend."""

import keras
import numpy as np
import pytest

from privkeras.layers import PolynomialActivation

pytestmark = pytest.mark.multi_backend

X = np.linspace(-3.0, 3.0, 61, dtype=np.float32).reshape(-1, 1)


def _apply(layer, x=X):
    return keras.ops.convert_to_numpy(layer(x))


def test_square_is_x_squared():
    np.testing.assert_allclose(_apply(PolynomialActivation("square")), X**2, rtol=1e-6)


def test_explicit_coefficients_are_lowest_degree_first():
    layer = PolynomialActivation([0.5, -1.0, 0.0, 0.25])
    expected = 0.5 - X + 0.25 * X**3
    np.testing.assert_allclose(_apply(layer), expected, rtol=1e-5, atol=1e-6)
    assert layer.function == "custom" and layer.degree == 3


def test_constant_polynomial():
    np.testing.assert_allclose(_apply(PolynomialActivation([2.0])), np.full_like(X, 2.0))


@pytest.mark.parametrize(
    "function, target, bound",
    [
        ("relu", lambda x: np.maximum(x, 0), 0.45),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), 0.03),
        ("tanh", np.tanh, 0.25),
    ],
)
def test_approximations_stay_within_their_stated_error(function, target, bound):
    layer = PolynomialActivation(function)
    assert layer.input_range == (-4.0, 4.0)
    assert layer.max_error < bound
    x = np.linspace(-4, 4, 101, dtype=np.float32).reshape(-1, 1)
    assert np.abs(_apply(layer, x) - target(x)).max() <= layer.max_error + 1e-5


def test_higher_degree_fits_better_and_parity_zeros_are_exact():
    low, high = PolynomialActivation("tanh", degree=3), PolynomialActivation("tanh", degree=7)
    assert high.max_error < low.max_error / 4
    assert np.all(high.coefficients[::2] == 0.0)  # tanh is odd: no round-off terms to pay for
    relu = PolynomialActivation("relu", degree=2, input_range=(-6, 6))
    assert relu.max_error > PolynomialActivation("relu", degree=2).max_error  # wider range


def test_config_round_trip_keeps_the_coefficients():
    layer = PolynomialActivation("sigmoid", degree=5, input_range=(-8, 8), name="act")
    clone = PolynomialActivation.from_config(layer.get_config())
    np.testing.assert_array_equal(clone.coefficients, layer.coefficients)
    assert (clone.function, clone.degree, clone.input_range) == ("sigmoid", 5, (-8.0, 8.0))
    custom = PolynomialActivation([0.1, 0.2, 0.3])
    assert PolynomialActivation.from_config(custom.get_config()).coefficients.tolist() == [
        0.1,
        0.2,
        0.3,
    ]


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), PolynomialActivation("relu", degree=4)]
    )
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    path = tmp_path / "poly.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_gradients_flow_through_it():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(4), PolynomialActivation(), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    y = (x[:, :1] ** 2).astype(np.float32)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"function": "gelu"}, "Expected function"),
        ({"function": "relu", "degree": 0}, "degree"),
        ({"function": "relu", "degree": 2.5}, "degree"),
        ({"function": "square", "degree": 3}, "degree None or 2"),
        ({"function": "relu", "input_range": (1, -1)}, "input_range"),
        ({"function": "relu", "input_range": (0, float("inf"))}, "input_range"),
        ({"function": [1.0, float("nan")]}, "finite coefficients"),
        ({"function": []}, "finite coefficients"),
        ({"function": [1.0, 2.0], "degree": 1}, "explicit coefficients"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolynomialActivation(**kwargs)
