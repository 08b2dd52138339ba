"""DP-SGD step time against plain Keras, same backend, same process.

Cases (the issue's): an MLP 784-256-256-10 and the classic DP MNIST CNN
(Conv2D 16 8x8 stride 2 same, MaxPool 2 stride 1, Conv2D 32 4x4 stride 2,
MaxPool 2 stride 1, Flatten, Dense 32, Dense 10) on synthetic 28x28x1 data,
batch 256, SGD. A step's time is the interval between consecutive
`on_train_batch_end` calls inside `fit` (data, step, callbacks: what a user
waits for), median over every step after the first epoch. Plain and DP fits
alternate for ten rounds, so both see the same machine load; each row also
carries the median (and quartiles) of the per-round ratios, which a load
change between rounds cannot bias. `dp-secure-noise` runs the same code with
the noise stream keyed from `os.urandom`: its cost is the same.

Keras fixes its backend at import: each backend runs in its own interpreter
(`python -m benchmarks.suites.dpsgd --backend torch` prints its rows as JSON).
Targets: DP / plain <= 1.3 (MLP), <= 1.6 (CNN).
"""

from __future__ import annotations

import statistics
import time
import warnings

from benchmarks.rows import print_backend_rows, rows_per_keras_backend

SUITE = "dpsgd"
BACKENDS = ("tensorflow", "torch")
BATCH = 256


def _mlp(keras):
    return [
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ]


def _cnn(keras):
    return [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 8, strides=2, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2, 1),
        keras.layers.Conv2D(32, 4, strides=2, padding="valid", activation="relu"),
        keras.layers.MaxPooling2D(2, 1),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ]


MODELS = {"mlp-784-256-256-10": _mlp, "mnist-cnn": _cnn}


def _step_times(keras, model, x, y, epochs: int) -> list[float]:
    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.samples, self.last, self.epoch = [], None, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.last, self.epoch = None, epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.last is not None and self.epoch > 0:  # epoch 0 traces and warms up
                self.samples.append(now - self.last)
            self.last = now

    timer = StepTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    return timer.samples


def _model(keras, pk, make, privacy):
    model = pk.PrivateSequential(make(keras))
    kwargs = {} if privacy is None else {"privacy": privacy}
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def measure_backend(quick: bool) -> list[dict]:
    """Rows for the Keras backend of this interpreter."""
    import keras
    import numpy as np

    import privkeras as pk
    from benchmarks.rows import row

    backend = keras.backend.backend()
    steps, epochs, rounds = (10, 2, 2) if quick else (20, 2, 10)
    rng = np.random.default_rng(0)
    x = rng.random((steps * BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, steps * BATCH)
    rows = []
    policies = {"dp": pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1)}
    if not quick:
        policies["dp-secure-noise"] = pk.DPSGD(
            l2_norm_clip=1.0, noise_multiplier=1.1, secure_noise=True
        )
    for name, make in MODELS.items():
        keras.utils.set_random_seed(0)
        plain = _model(keras, pk, make, None)
        private = {label: _model(keras, pk, make, p) for label, p in policies.items()}
        samples = {"plain": [], **{label: [] for label in private}}
        paired = {label: [] for label in private}  # per-round ratios: robust to load drift
        for _ in range(rounds):
            base = _step_times(keras, plain, x, y, epochs)
            samples["plain"] += base
            for label, model in private.items():
                times = _step_times(keras, model, x, y, epochs)
                samples[label] += times
                paired[label].append(statistics.median(times) / statistics.median(base))
        base = statistics.median(samples["plain"])
        rows.append(
            row(
                SUITE,
                f"{backend}/{name}/plain",
                "step_time",
                base * 1e3,
                "ms",
                batch=BATCH,
                steps=len(samples["plain"]),
            )
        )
        for label in private:
            value = statistics.median(samples[label])
            quartiles = statistics.quantiles(paired[label], n=4)
            rows.append(
                row(
                    SUITE,
                    f"{backend}/{name}/{label}",
                    "step_time",
                    value * 1e3,
                    "ms",
                    baseline=base * 1e3,
                    batch=BATCH,
                    steps=len(samples[label]),
                    paired_ratio_median=statistics.median(paired[label]),
                    paired_ratio_quartiles=[quartiles[0], quartiles[2]],
                )
            )
    return rows


def run(quick: bool) -> list[dict]:
    """Both backends, each in a subprocess with its own Keras backend."""
    return rows_per_keras_backend("benchmarks.suites.dpsgd", BACKENDS, quick)


if __name__ == "__main__":
    print_backend_rows(BACKENDS, measure_backend)
