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
