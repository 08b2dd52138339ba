"""Quickstart: a PrivateSequential is a keras.Sequential until you pick a policy.

Run: python examples/quickstart.py
"""

import keras

import privkeras as pk
from privkeras import datasets


def main() -> None:
    keras.utils.set_random_seed(0)
    data = datasets.breast_cancer()
    model = pk.PrivateSequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    # privacy=None: plain Keras. Swap in pk.DPSGD(...), "mpc" or "he" to change the policy.
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"], privacy=None)
    model.fit(data.x_train, data.y_train, epochs=10, batch_size=32, verbose=0)
    model.summary()
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    print(f"test accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()
