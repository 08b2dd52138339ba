"""Small data and models for the federated tests."""

import keras
import numpy as np
import pytest

import privkeras as pk

FEATURES, CLASSES = 8, 3


def make_partitions(sizes=(40, 30, 50), seed=0):
    """Owners' (x, y): a linear 3-class problem, one partition per size."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES)) * 2
    parts = []
    for size in sizes:
        y = rng.integers(0, CLASSES, size=size)
        x = (centers[y] + rng.normal(size=(size, FEATURES))).astype("float32")
        parts.append((x, y))
    return parts


def make_model(policy, optimizer=None, metrics=("accuracy",), seed=1):
    keras.utils.set_random_seed(seed)
    model = pk.PrivateSequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=list(metrics),
        privacy=policy,
    )
    return model


def keras_twin(model, optimizer=None):
    """A plain keras.Sequential with the same layers, weights, loss and metrics (the oracle)."""
    twin = keras.Sequential.from_config(model.get_config())
    twin.set_weights(model.get_weights())
    twin.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return twin


def flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


@pytest.fixture
def partitions():
    return make_partitions()
