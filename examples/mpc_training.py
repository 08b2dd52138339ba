"""Encrypted training: a model owner and two data owners, none of whom sees another's secrets.

The model owner secret-shares its model; two hospitals secret-share their own
patient rows. The compute parties train on shares only. The model owner
receives one thing: the combined update of the weights (never one hospital's
gradient), and nothing is ever revealed to the hospitals. The runtime's reveal
log, printed at the end, is the proof.

Run: python examples/mpc_training.py
"""

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets


def main() -> None:
    data = datasets.breast_cancer()
    # Two data owners with different numbers of rows (and different patients).
    split = 180
    hospitals = pk.SharedData(
        [
            (data.x_train[:split], data.y_train[:split]),
            (data.x_train[split:], data.y_train[split:]),
        ],
        owners=["hospital_a", "hospital_b"],
    )
    print(hospitals)

    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    initial = [w.copy() for w in model.get_weights()]
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=pk.MPC(protocol="aby3"),  # three parties, no trusted dealer
    )
    model.fit(hospitals, epochs=5, batch_size=64, verbose=1)

    update_norm = np.sqrt(sum(np.sum((w - w0) ** 2) for w, w0 in zip(model.get_weights(), initial)))
    print(f"norm of the combined update the model owner received: {update_norm:.3f}")
    _, accuracy = model.keras_evaluate(data.x_test, data.y_test, verbose=0)
    print(f"model owner's test accuracy with the updated weights: {accuracy:.3f}")

    print("reveal log (what was revealed, to whom):")
    for record in model.engine.runtime.reveal_log:
        print(f"  {record.what:<36} -> {record.to:<12} shape {record.shape}")
    communicator = model.engine.runtime.communicator
    print(f"cost: {communicator.rounds} rounds, {communicator.bytes_sent / 1e6:.1f} MB sent")


if __name__ == "__main__":
    main()
