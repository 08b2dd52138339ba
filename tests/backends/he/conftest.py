"""Models shared by the HE tests: HE-friendly digits classifiers trained in plaintext."""

import keras
import numpy as np
import pytest

from privkeras import datasets
from privkeras.layers import PolynomialActivation
from privkeras.models import PrivateSequential

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _trained(model: PrivateSequential, data, epochs: int) -> PrivateSequential:
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def digits_mlp():
    """MLP 64-32-10 with a square activation, trained in plaintext, and its data."""
    keras.utils.set_random_seed(0)
    data = datasets.digits()
    model = PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32),
            PolynomialActivation("square"),
            keras.layers.Dense(10),
        ]
    )
    return _trained(model, data, epochs=12), data


@pytest.fixture(scope="session")
def digits_cnn():
    """Conv2D(8, 3) - square - AveragePooling2D - Dense(10), trained in plaintext."""
    keras.utils.set_random_seed(0)
    data = datasets.digits(images=True)
    model = PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3),
            PolynomialActivation("square"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    return _trained(model, data, epochs=12), data


@pytest.fixture(scope="session")
def small_model():
    """Depth 2: Dense(5) then a square, on 6 features."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), PolynomialActivation("square")]
    )
    x = np.random.default_rng(2).uniform(-1, 1, (12, 6))
    return model, x
