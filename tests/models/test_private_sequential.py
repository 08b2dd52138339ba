import warnings
from typing import ClassVar

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends import registry
from privkeras.backends.base import Engine


def _data(n=64, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def _layers(d=6):
    return [
        keras.Input((d,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ]


def _train(model_cls):
    keras.utils.set_random_seed(7)
    model = model_cls(_layers())
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"]
    )
    x, y = _data()
    history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    return model, history, model.predict(x, verbose=0), model.evaluate(x, y, verbose=0)


@pytest.mark.multi_backend
def test_without_privacy_it_is_exactly_keras_sequential():
    _, keras_history, keras_pred, keras_eval = _train(keras.Sequential)
    model, history, pred, evaluation = _train(pk.PrivateSequential)
    assert isinstance(model, keras.Sequential)
    assert model.privacy is None
    assert history.history == keras_history.history
    np.testing.assert_array_equal(pred, keras_pred)
    assert evaluation == keras_eval


def test_compile_keeps_every_keras_argument():
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="adam", loss="mse", metrics=["mae"], run_eagerly=True, privacy=None)
    assert model.run_eagerly
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    x, y = _data(16)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "mae"}


def test_bad_privacy_string_is_a_typed_error():
    model = pk.PrivateSequential(_layers())
    with pytest.raises(pk.PrivacyPolicyError, match=r"Received: privacy='dpsgd'"):
        model.compile(optimizer="sgd", loss="mse", privacy="dpsgd")


class _RecordingFederatedEngine(Engine):
    """A test engine for the federated policy: it records what the model routes to it."""

    name = "test-recording-federated"
    policy_kind = "federated"
    TRAINS = PREDICTS = True
    calls: ClassVar[list] = []

    def fit(self, model, *args, **kwargs):
        self.calls.append("fit")
        return model.keras_fit(*args, **kwargs)

    def predict(self, model, *args, **kwargs):
        self.calls.append("predict")
        return model.keras_predict(*args, **kwargs)


@pytest.fixture
def federated_engine():
    saved = {k: v for k, v in registry.available_engines().items() if v.policy_kind == "federated"}
    for name in saved:
        registry.unregister_engine(name)
    registry.register_engine(_RecordingFederatedEngine)
    _RecordingFederatedEngine.calls.clear()
    yield _RecordingFederatedEngine
    registry.unregister_engine(_RecordingFederatedEngine.name)
    for engine in saved.values():
        registry.register_engine(engine)


def test_fit_and_predict_are_routed_to_the_engine(federated_engine):
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="sgd", loss="mse", privacy=pk.Federated(rounds=2))
    assert model.privacy == pk.Federated(rounds=2)
    assert model.engine.name == federated_engine.name
    x, y = _data(16)
    model.fit(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert federated_engine.calls == ["fit", "predict"]
    with pytest.raises(pk.CapabilityError, match="does not support evaluate"):
        model.evaluate(x, y, verbose=0)


def test_summary_shows_the_policy(federated_engine):
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="sgd", loss="mse", privacy=pk.Federated(rounds=4))
    text = model.summary_text()
    assert "Privacy policy: Federated(rounds=4" in text
    assert federated_engine.name in text


def test_save_and_load_round_trip_architecture_weights_and_policy(tmp_path, federated_engine):
    model = pk.PrivateSequential(_layers())
    policy = pk.Federated(rounds=3, clip_norm=2.0, noise_multiplier=0.5)
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"], privacy=policy)
    x, y = _data(16)
    model.keras_fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is pk.PrivateSequential
    assert loaded.privacy == policy
    assert loaded.engine.name == federated_engine.name
    assert [layer.get_config()["units"] for layer in loaded.layers] == [8, 1]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        loaded.keras_predict(x, verbose=0), model.keras_predict(x, verbose=0)
    )


def test_save_and_load_without_privacy(tmp_path):
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "plain.keras")
    loaded = keras.models.load_model(tmp_path / "plain.keras")
    assert loaded.privacy is None
    assert loaded.engine.name == "plaintext"


def test_privacy_report_needs_compile():
    model = pk.PrivateSequential(_layers())
    with pytest.raises(RuntimeError, match="compile"):
        model.privacy_report()


# -- the same checks for every engine, before any step (issue 8, item 5) ------------------------
def _dp_policy():
    return pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0, delta=1e-3)


@pytest.mark.multi_backend
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_training_data_is_refused_before_any_dp_step(bad):
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="sgd", loss="binary_crossentropy", privacy=_dp_policy())
    x, y = _data()
    x[5, 2] = bad
    before = model.get_weights()
    with pytest.raises(pk.InvalidInputError, match=r"finite values in x.*rows \[5\].*\(5, 2\)"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert model.privacy_report()["steps"] == 0


@pytest.mark.multi_backend
def test_non_finite_targets_and_tensors_are_refused_too():
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer="sgd", loss="binary_crossentropy", privacy=_dp_policy())
    x, y = _data()
    y[7, 0] = np.nan
    with pytest.raises(pk.InvalidInputError, match=r"finite values in y.*rows \[7\]"):
        model.fit(x, y, batch_size=16, verbose=0)
    x_tensor = keras.ops.convert_to_tensor(np.where(np.arange(64)[:, None] == 9, np.inf, x))
    with pytest.raises(pk.InvalidInputError, match=r"rows \[9\]"):
        model.predict(x_tensor, verbose=0)
    with pytest.raises(pk.InvalidInputError, match=r"validation_data x.*rows \[1\]"):
        x_val = x[:4].copy()
        x_val[1, 0] = np.nan
        model.fit(x, _data()[1], batch_size=16, validation_data=(x_val, y[:4]), verbose=0)


def test_the_finiteness_check_names_every_bad_row_up_to_ten():
    from privkeras.backends import validation

    x = np.zeros((100, 3), dtype="float32")
    x[[4, 8, 15, 16, 23, 42, 50, 60, 70, 80, 90, 99], 1] = np.nan
    with pytest.raises(pk.InvalidInputError, match=r"rows \[4, 8, .*, 80\] and 2 more"):
        validation.check_finite(x, "x")
    validation.check_finite(np.arange(10), "labels")  # integers are always finite


# -- every entry point routed or refused (issue 8, item 6) ----------------------------------
def _mpc_policy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.MPC(seed=0)


def _linear_model(privacy):
    keras.utils.set_random_seed(3)
    model = pk.PrivateSequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", privacy=privacy)
    return model


def _on_the_engine(model, call):
    """`call()`, asserting that the engine computed it (MPC rounds, HE samples encrypted)."""
    if model.privacy.kind == "mpc":
        rounds = model.engine.runtime.communicator.rounds
        result = call()
        assert model.engine.runtime.communicator.rounds > rounds
    else:
        model.engine.last_run = {}
        result = call()
        assert model.engine.last_run["samples"] > 0
    return result


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("privacy", [_mpc_policy, lambda: "he"], ids=["mpc", "he"])
def test_batch_calls_under_mpc_and_he_run_encrypted_or_are_refused(privacy):
    model = _linear_model(privacy())
    x, y = _data(8)
    plain = model.keras_predict(x, verbose=0)
    outputs = _on_the_engine(model, lambda: model.predict_on_batch(x))
    np.testing.assert_allclose(outputs, plain, atol=1e-2)
    loss = _on_the_engine(model, lambda: model.test_on_batch(x, y))
    assert loss == pytest.approx(float(np.mean((plain - y) ** 2)), abs=1e-2)
    with pytest.raises(pk.CapabilityError, match=repr(model.engine.name)):
        model.train_on_batch(x, y)
    for step in (
        lambda: model.train_step((x, y)),
        lambda: model.test_step((x, y)),
        lambda: model.predict_step(x),
    ):
        with pytest.raises(pk.CapabilityError, match=repr(model.engine.name)):
            step()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_positional_keras_arguments_reach_every_engine_by_name():
    model = _linear_model(_mpc_policy())
    x, y = _data(8)
    history = model.fit(x, y, 4, 2, 0)  # batch_size, epochs, verbose, as Keras takes them
    assert isinstance(history, keras.callbacks.History)
    assert model.predict(x, 4, 0).shape == (8, 1)
    with pytest.raises(TypeError, match="no_such_argument"):
        model.predict(x, no_such_argument=1)


def test_call_is_the_owners_plaintext_forward_pass():
    model = _linear_model(_mpc_policy())
    x, _ = _data(4)
    outputs = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(outputs, model.keras_predict(x, verbose=0), rtol=1e-6)
    assert "model(x)" in pk.PrivateSequential.__doc__


# -- compile is atomic (issue 8, item 7) --------------------------------------------------------
def _compile_state(model):
    return (
        model.privacy,
        model.engine,
        model.compiled,
        getattr(model, "optimizer", None),
        model.get_compile_config() if model.compiled else None,
    )


def test_an_engine_refusing_the_model_at_compile_leaves_it_as_it_was():
    model = pk.PrivateSequential(_layers())  # relu: HE refuses it
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    before = _compile_state(model)
    with pytest.raises(pk.UnsupportedLayerError):
        model.compile(optimizer="adam", loss="mse", privacy="he")
    assert _compile_state(model) == before
    assert model.engine.name == "plaintext"
    model.fit(*_data(16), epochs=1, verbose=0)  # still the plain model it was


def test_keras_refusing_compile_arguments_restores_the_previous_compile():
    model = pk.PrivateSequential(_layers())
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    before = _compile_state(model)
    with pytest.raises(ValueError, match="metrics"):
        model.compile(optimizer="adam", loss="mae", metrics="accuracy", privacy=_dp_policy())
    assert _compile_state(model) == before
    fresh = pk.PrivateSequential(_layers())
    with pytest.raises(ValueError, match="metrics"):
        fresh.compile(optimizer="adam", loss="mae", metrics="accuracy")
    assert not fresh.compiled and fresh.engine is None and fresh.privacy is None
