"""Encrypted training against plain Keras: gradients of every layer family, SGD with
momentum, the issue's accuracy targets, multi-owner data, and the Keras loop (History,
callbacks, early stopping).
"""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras import datasets
from privkeras.errors import CapabilityError, UnsupportedLayerError

pytestmark = [
    pytest.mark.filterwarnings("ignore:MPC\\(seed=:UserWarning"),
    pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer:UserWarning"),
]


def mpc(**kwargs) -> pk.MPC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.MPC(**kwargs)


def _pair(layers, loss, optimizer, policy, seed=1):
    """The same model twice: plain Keras, and compiled with `policy`."""
    models = []
    for privacy in (None, policy):
        keras.utils.set_random_seed(seed)
        model = pk.PrivateSequential(layers())
        model.compile(optimizer=optimizer(), loss=loss, metrics=["accuracy"], privacy=privacy)
        models.append(model)
    return models


GRADIENT_CASES = {
    "dense-relu-tanh-softmax-ce": (
        lambda: [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(3, activation="tanh"),
            keras.layers.Dense(4, activation="softmax"),
        ],
        "categorical_crossentropy",
        (6,),
        "onehot",
    ),
    "dense-sigmoid-mse": (
        lambda: [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="sigmoid"),
            keras.layers.Dense(2),
        ],
        "mse",
        (6,),
        "real",
    ),
    "conv-maxpool-avgpool-gap-logits": (
        lambda: [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(4, 2),
            keras.layers.AveragePooling2D(2, strides=1, padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ],
        keras.losses.CategoricalCrossentropy(from_logits=True),
        (6, 6, 2),
        "onehot",
    ),
    "strided-conv-flatten-sigmoid-bce": (
        lambda: [
            keras.Input((5, 5, 1)),
            keras.layers.Conv2D(2, 2, strides=2, padding="same"),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Reshape((2, 9)),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        "binary_crossentropy",
        (5, 5, 1),
        "binary",
    ),
}


@pytest.mark.multi_backend
@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_encrypted_steps_match_keras_updates(case):
    # Full-batch steps with momentum: the backward pass of every layer family and
    # the SGD rule, against Keras's autodiff and optimizer. Cases with a ReLU take
    # one step: after that, a pre-activation within fixed-point noise of 0 may
    # legitimately take the other branch of the ReLU.
    layers, loss, shape, labels = GRADIENT_CASES[case]
    epochs = 1 if "relu" in case or "conv" in case else 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, *shape)).astype("float32")
    optimizer = lambda: keras.optimizers.SGD(0.5, momentum=0.5)  # noqa: E731
    plain, secure = _pair(layers, loss, optimizer, mpc(seed=3))
    initial = plain.get_weights()
    out = plain.output_shape[-1]
    y = {
        "onehot": np.eye(out)[rng.integers(0, out, 16)],
        "real": rng.normal(size=(16, out)),
        "binary": rng.integers(0, 2, (16, 1)),
    }[labels].astype("float32")
    for model in (plain, secure):
        model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    for w0, expected, got in zip(initial, plain.get_weights(), secure.get_weights()):
        update = np.abs(expected - w0).max()
        assert np.abs((got - w0) - (expected - w0)).max() <= 0.02 * update + 2e-4


def test_logistic_regression_on_breast_cancer_within_one_point_of_plaintext():
    data = datasets.breast_cancer()
    plain, secure = _pair(
        lambda: [keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")],
        "binary_crossentropy",
        lambda: keras.optimizers.SGD(0.5),
        mpc(seed=4, engine="torch"),
    )
    results = []
    for model in (plain, secure):
        model.fit(
            data.x_train,
            data.y_train,
            batch_size=len(data.x_train),
            epochs=20,
            shuffle=False,
            verbose=0,
        )
        results.append(model.keras_evaluate(data.x_test, data.y_test, verbose=0)[1])
    assert abs(results[0] - results[1]) <= 0.01
    assert results[1] > 0.9


def test_mlp_on_digits_within_two_points_of_plaintext():
    data = datasets.digits()
    plain, secure = _pair(
        lambda: [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        "sparse_categorical_crossentropy",
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        mpc(seed=5, engine="torch"),
    )
    results = []
    for model in (plain, secure):
        model.fit(data.x_train, data.y_train, batch_size=64, epochs=4, shuffle=False, verbose=0)
        results.append(model.keras_evaluate(data.x_test, data.y_test, verbose=0)[1])
    assert abs(results[0] - results[1]) <= 0.02
    assert results[1] > 0.9


def test_multi_owner_training_learns_from_both_owners():
    # Alice holds only digits 0-4, Bob only 5-9: a model that learned from one
    # owner alone could not classify the other's digits.
    data = datasets.digits()
    alice = data.y_train < 5
    shared = pk.SharedData(
        [(data.x_train[alice], data.y_train[alice]), (data.x_train[~alice], data.y_train[~alice])],
        owners=["alice", "bob"],
    )
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=mpc(seed=6, engine="torch"),
    )
    model.fit(shared, batch_size=64, epochs=2, verbose=0)
    predictions = model.keras_predict(data.x_test, verbose=0).argmax(1)
    for low_half in (True, False):
        rows = (data.y_test < 5) == low_half
        assert np.mean(predictions[rows] == data.y_test[rows]) > 0.8


def test_fit_speaks_keras_history_callbacks_and_early_stopping(capsys):
    data = datasets.breast_cancer()
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=mpc(seed=7),
    )
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(("batch", batch)),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch", epoch, sorted(logs))),
    )
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
    history = model.fit(
        data.x_train[:100],
        data.y_train[:100],
        batch_size=50,
        epochs=5,
        verbose=1,
        validation_data=(data.x_test[:60], data.y_test[:60]),
        callbacks=[recorder, stopper],
    )
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == [0, 1]  # stopped early: val_loss never improves by 10
    assert sorted(history.history) == ["val_accuracy", "val_loss"]
    assert seen[:3] == [("batch", 0), ("batch", 1), ("epoch", 0, ["val_accuracy", "val_loss"])]
    expected = model.keras_evaluate(data.x_test[:60], data.y_test[:60], verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(expected["loss"], abs=0.01)
    output = capsys.readouterr().out
    assert "Epoch 2/5" in output and "2/2" in output  # Keras's ProgbarLogger


@pytest.mark.parametrize(
    "compile_args, error, pattern",
    [
        ({"loss": "hinge", "optimizer": "sgd"}, CapabilityError, "'hinge'"),
        ({"loss": "binary_crossentropy", "optimizer": "adam"}, CapabilityError, "Adam"),
        ({"loss": "categorical_crossentropy", "optimizer": "sgd"}, CapabilityError, "softmax"),
    ],
)
def test_unsupported_losses_and_optimizers_are_named_before_any_work(compile_args, error, pattern):
    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(**compile_args, privacy=mpc(seed=0))
    with pytest.raises(error, match=pattern):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    runtime = model.engine._runtime
    assert runtime is None or (runtime.communicator.rounds == 0 and not runtime.reveal_log)


def test_layers_that_only_infer_are_refused_for_training():
    model = pk.PrivateSequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse", privacy=mpc(seed=0))
    with pytest.raises(UnsupportedLayerError, match=r"'drop'.*inference only"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    model.predict(np.ones((2, 3)), verbose=0)  # inference still works


def test_frozen_layers_keep_their_weights():
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)]
    )
    model.layers[0].trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", privacy=mpc(seed=0))
    frozen = model.layers[0].get_weights()
    before = model.layers[1].get_weights()[0].copy()
    model.fit(np.ones((8, 3)), np.full((8, 1), 3.0), batch_size=8, verbose=0)
    for old, new in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not np.allclose(before, model.layers[1].get_weights()[0])
