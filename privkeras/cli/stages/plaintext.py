"""Demo stage: a plain PrivateSequential (privacy=None) on breast cancer."""

from __future__ import annotations

import time

import keras

from privkeras import datasets
from privkeras.models import PrivateSequential


def breast_cancer_model() -> PrivateSequential:
    """The demo's model: 30 -> 16 (relu) -> 1 (sigmoid)."""
    return PrivateSequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def run(verbose: bool = False) -> dict:
    keras.utils.set_random_seed(0)
    data = datasets.breast_cancer()
    model = breast_cancer_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"]
    )
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=20, batch_size=32, verbose=int(verbose))
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    seconds = time.perf_counter() - start
    print(f"[plaintext] breast cancer: test accuracy {accuracy:.3f} ({seconds:.1f} s)")
    return {"accuracy": float(accuracy), "seconds": seconds}
