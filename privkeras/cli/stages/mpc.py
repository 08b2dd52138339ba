"""Demo stage: encrypted training and private inference under MPC (Pond, 2 parties + dealer).

The parties are real processes: `pk.mpc.local_cluster` starts p0, p1 and the
dealer as `privkeras party` processes on loopback (mutual TLS with
development certificates) and stops them when the stage ends.
"""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np

from privkeras import datasets
from privkeras.backends.mpc.shared_data import SharedData
from privkeras.models import PrivateSequential
from privkeras.policies import MPC


def _policy(parties: dict[str, str]) -> MPC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo's seed is for a reproducible printout
        return MPC(protocol="pond", seed=0, parties=parties)


def _encrypted_training(parties: dict[str, str], verbose: bool) -> dict:
    """Logistic regression on breast cancer, rows split between two data owners."""
    data = datasets.breast_cancer()
    half = len(data.x_train) // 2
    owners = SharedData(
        [(data.x_train[:half], data.y_train[:half]), (data.x_train[half:], data.y_train[half:])],
        owners=["hospital_a", "hospital_b"],
    )
    keras.utils.set_random_seed(0)
    model = PrivateSequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=_policy(parties),
    )
    start = time.perf_counter()
    model.fit(owners, epochs=20, batch_size=len(owners), verbose=int(verbose))
    seconds = time.perf_counter() - start
    communicator = model.engine.last_report.stats
    _, accuracy = model.keras_evaluate(data.x_test, data.y_test, verbose=0)
    print(
        f"[mpc] encrypted training, breast cancer, 2 data owners, 20 epochs: test accuracy "
        f"{accuracy:.3f} ({seconds:.1f} s, {communicator.rounds} rounds, "
        f"{communicator.bytes_sent / 1e6:.1f} MB)"
    )
    return {"training_accuracy": float(accuracy), "training_seconds": seconds}


def _private_inference(parties: dict[str, str], verbose: bool) -> dict:
    """An MLP trained in plaintext on digits, queried on secret-shared inputs."""
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    model = PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=10, batch_size=32, verbose=0)
    plaintext = model.predict(data.x_test, verbose=0)
    model.compile(
        loss="sparse_categorical_crossentropy", metrics=["accuracy"], privacy=_policy(parties)
    )
    start = time.perf_counter()
    private = model.predict(data.x_test, batch_size=150, verbose=int(verbose))
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(private.argmax(1) == data.y_test))
    agreement = float(np.mean(private.argmax(1) == plaintext.argmax(1)))
    print(
        f"[mpc] private inference, digits MLP, {len(private)} secret-shared rows: accuracy "
        f"{accuracy:.3f}, agrees with plaintext on {agreement:.1%} ({seconds:.1f} s)"
    )
    return {"inference_accuracy": accuracy, "agreement": agreement, "inference_seconds": seconds}


def run(verbose: bool = False) -> dict:
    from privkeras.backends.mpc.local import local_cluster

    start = time.perf_counter()
    with local_cluster("pond", tls=True) as cluster:
        print(
            f"[mpc] parties p0, p1 and the dealer as processes on loopback over mutual TLS "
            f"(pids {', '.join(str(p) for p in cluster.pids.values())}; started in "
            f"{time.perf_counter() - start:.1f} s)"
        )
        return {
            **_encrypted_training(cluster.parties, verbose),
            **_private_inference(cluster.parties, verbose),
        }
