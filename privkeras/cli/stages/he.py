"""Demo stage: encrypted (CKKS) inference of a digits MLP trained in plaintext."""

from __future__ import annotations

import time

import keras
import numpy as np

from privkeras import datasets
from privkeras.layers import PolynomialActivation
from privkeras.models import PrivateSequential

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits_mlp() -> PrivateSequential:
    """The demo's HE-friendly model: 64 -> 32 (square) -> 10 logits."""
    return PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32),
            PolynomialActivation("square"),
            keras.layers.Dense(10),
        ]
    )


def run(verbose: bool = False) -> dict:
    keras.utils.set_random_seed(0)
    data = datasets.digits()
    model = digits_mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=_LOSS, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=12, batch_size=32, verbose=int(verbose))
    plain = model.predict(data.x_test, verbose=0)

    model.compile(loss=_LOSS, metrics=["accuracy"], privacy="he")
    start = time.perf_counter()
    encrypted = model.predict(data.x_test, verbose=int(verbose))
    batch_seconds = time.perf_counter() - start
    batch_run = dict(model.engine.last_run)
    model.predict(data.x_test[:1], verbose=0)  # keys and encoded weights for one sample
    start = time.perf_counter()
    model.predict(data.x_test[1:2], verbose=0)
    latency = time.perf_counter() - start
    single = model.engine.last_run

    accuracy = float(np.mean(encrypted.argmax(1) == data.y_test))
    agreement = float(np.mean(encrypted.argmax(1) == plain.argmax(1)))
    error = float(np.abs(encrypted - plain).max())
    n = len(data.x_test)
    print(
        f"[he] digits MLP under CKKS: test accuracy {accuracy:.3f}, argmax agreement with "
        f"plaintext {agreement:.3f} (max logit error {error:.1e}); {n} rows in {batch_seconds:.2f} s "
        f"({n / batch_seconds:.0f} samples/s, {batch_run['groups']} ciphertext group of "
        f"{batch_run['block']}); one sample {1e3 * latency:.0f} ms (encrypt "
        f"{1e3 * single['encrypt_seconds']:.1f}, evaluate {1e3 * single['evaluate_seconds']:.0f}, "
        f"decrypt {1e3 * single['decrypt_seconds']:.1f} ms)"
    )
    return {
        "accuracy": accuracy,
        "agreement": agreement,
        "max_logit_error": error,
        "samples_per_second": n / batch_seconds,
        "latency_seconds": latency,
    }
