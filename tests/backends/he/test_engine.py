"""compile(privacy="he"): encrypted predict/evaluate against plaintext Keras on digits."""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.he import HEEngine
from privkeras.backends.he.client import HEClient
from privkeras.backends.he.errors import DepthExceededError
from privkeras.errors import (
    CapabilityError,
    InvalidInputError,
    PrecisionOverflowError,
    UnsupportedLayerError,
)
from privkeras.layers import PolynomialActivation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _encrypted(model, x, **kwargs):
    plain = model.predict(x, verbose=0)
    model.compile(loss=LOSS, metrics=["accuracy"], privacy="he")
    try:
        return model.predict(x, verbose=0, **kwargs), plain, model.engine
    finally:
        model.compile(loss=LOSS, metrics=["accuracy"])


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn"])
def test_encrypted_argmax_agrees_with_plaintext_on_the_whole_test_split(fixture, request):
    model, data = request.getfixturevalue(fixture)
    encrypted, plain, engine = _encrypted(model, data.x_test)
    agreement = float(np.mean(encrypted.argmax(1) == plain.argmax(1)))
    max_logit_error = float(np.abs(encrypted - plain).max())
    print(
        f"{fixture}: {len(plain)} rows, argmax agreement {agreement:.4f}, "
        f"max logit error {max_logit_error:.2e}, packing {engine.last_run}"
    )
    assert agreement >= 0.99
    assert max_logit_error < 1e-3
    assert float(np.mean(plain.argmax(1) == data.y_test)) > 0.9  # a real classifier
    assert engine.last_run["groups"] == 1  # the SIMD path: all rows in one ciphertext group


def test_single_sample_path_and_explicit_batch_size(digits_mlp):
    model, data = digits_mlp
    one, plain, engine = _encrypted(model, data.x_test[:1])
    assert engine.last_run["block"] == 1
    np.testing.assert_allclose(one, plain, atol=1e-3)
    few, plain, engine = _encrypted(model, data.x_test[:10], batch_size=4)
    assert (engine.last_run["block"], engine.last_run["groups"]) == (4, 3)
    np.testing.assert_allclose(few, plain, atol=1e-3)


def test_evaluate_reports_keras_metrics_on_decrypted_outputs(digits_mlp):
    model, data = digits_mlp
    x, y = data.x_test[:64], data.y_test[:64]
    plain_loss, plain_accuracy = model.evaluate(x, y, verbose=0)
    model.compile(loss=LOSS, metrics=["accuracy"], privacy="he")
    try:
        logs = model.evaluate(x, y, verbose=0, return_dict=True)
        assert isinstance(model.engine, HEEngine)
        report = model.privacy_report()
    finally:
        model.compile(loss=LOSS, metrics=["accuracy"])
    assert logs["accuracy"] == pytest.approx(plain_accuracy)
    assert logs["loss"] == pytest.approx(plain_loss, abs=1e-4)
    assert report["depth"] == 3 and report["parameters"]["poly_modulus_degree"] == 8192


def test_bad_inputs_get_typed_errors(small_model):
    model, x = small_model
    model = pk.PrivateSequential([keras.Input((6,)), *model.layers], name="bad_inputs")
    model.compile(privacy="he")
    with pytest.raises(InvalidInputError, match=r"shape \(None, 6\).*\(12, 7\)"):
        model.predict(np.zeros((12, 7)), verbose=0)
    with pytest.raises(InvalidInputError, match="NaN or infinite values in rows \\[3\\]"):
        bad = x.copy()
        bad[3, 1] = np.nan
        model.predict(bad, verbose=0)
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        model.predict(np.full((2, 6), np.inf), verbose=0)
    with pytest.raises(PrecisionOverflowError, match="max \\|x\\| = 1e\\+06"):
        model.predict(np.full((2, 6), 1e6), verbose=0)
    with pytest.raises(InvalidInputError, match="batch_size"):
        model.predict(x, batch_size=0, verbose=0)
    with pytest.raises(CapabilityError, match="train in plaintext"):
        model.fit(x, x[:, :5])


def test_inputs_outside_a_fitted_range_warn_with_the_range():
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2),
            PolynomialActivation("tanh", input_range=(-1, 1), name="act"),
        ]
    )
    model.compile(privacy="he")
    with pytest.warns(UserWarning, match=r"'act' reach \[.*\], outside the range \[-1, 1\]"):
        model.predict(np.full((2, 3), 5.0), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(np.full((2, 3), 0.01), verbose=0)


def test_unsupported_layers_and_too_deep_models_fail_at_compile_before_any_key(monkeypatch):
    monkeypatch.setattr(HEClient, "__init__", lambda *a, **k: pytest.fail("keys were made"))
    relu = pk.PrivateSequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    with pytest.raises(UnsupportedLayerError, match="PolynomialActivation"):
        relu.compile(privacy="he")
    deep = pk.PrivateSequential(
        [keras.Input((4,))] + [PolynomialActivation(list(np.linspace(0.1, 1, 33)))] * 9
    )
    with pytest.raises(DepthExceededError, match="needs multiplicative depth 54"):
        deep.compile(privacy="he")
    mlp = pk.PrivateSequential(
        [keras.Input((4,)), keras.layers.Dense(3), PolynomialActivation(), keras.layers.Dense(2)]
    )
    with pytest.raises(DepthExceededError, match=r"depth 3.*N=4096.*offers depth 1"):
        mlp.compile(privacy=pk.HE(poly_modulus_degree=4096))


@pytest.mark.multi_backend
def test_engine_runs_under_the_current_keras_backend(small_model):
    layers, x = small_model
    model = pk.PrivateSequential([keras.Input((6,)), *layers.layers], name="any_backend")
    expected = model.predict(x, verbose=0)
    model.compile(privacy="he")
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-3)
    np.testing.assert_allclose(model.predict(x[:1], verbose=0), expected[:1], atol=1e-3)
