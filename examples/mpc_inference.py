"""Private inference: the client's inputs and the server's model stay secret-shared.

A model owner trains a small CNN on digits in plaintext, then serves it under
MPC: the weights are secret-shared once, each query is secret-shared by the
client, and only the predictions are revealed, to the client.

Run: python examples/mpc_inference.py
"""

import time

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets


def main() -> None:
    data = datasets.digits(images=True)
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),  # folded into the convolution at inference
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.2),  # the identity at inference
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=8, batch_size=32, verbose=0)
    plaintext = model.predict(data.x_test, verbose=0)

    model.compile(
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=pk.MPC(protocol="pond"),  # 2 parties + a dealer of correlated randomness
    )
    start = time.perf_counter()
    private = model.predict(data.x_test, batch_size=128, verbose=1)
    seconds = time.perf_counter() - start
    agreement = np.mean(private.argmax(1) == plaintext.argmax(1))
    print(f"{len(private)} private predictions in {seconds:.1f} s")
    print(
        f"agreement with plaintext argmax: {agreement:.1%}, "
        f"max |difference|: {np.abs(private - plaintext).max():.2e}"
    )
    print(
        "private evaluate:", model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    )
    print("revealed:", sorted({(r.what, r.to) for r in model.engine.runtime.reveal_log}))


if __name__ == "__main__":
    main()
