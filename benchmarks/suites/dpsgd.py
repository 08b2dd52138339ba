"""DP-SGD against plain Keras, same backend, same process: steps, whole fits, noise.

Cases: an MLP 784-256-256-10 and the classic DP MNIST CNN (Conv2D 16 8x8
stride 2 same, MaxPool 2 stride 1, Conv2D 32 4x4 stride 2, MaxPool 2 stride
1, Flatten, Dense 32, Dense 10) on synthetic 28x28x1 data, batch 256, SGD.

- `step_time`: the interval between consecutive `on_train_batch_end` calls
  inside `fit` (data, step, callbacks: what a user waits for), median over
  every step after the first epoch; Poisson and shuffled batches, and the
  device noise route forced on CPU (`dp-device-noise`: the route of
  accelerator and XLA models, AES-CTR words turned into Gaussians in the
  step). Plain and DP fits alternate for `rounds` rounds; each row carries
  the median and quartiles of the per-round ratios, which a load change
  between rounds cannot bias.
- Whole fits, the MLP on 7,680 examples (30 steps per epoch), 3 epochs:
  `first_batch` (from calling `fit` to the end of its first batch; `cold`:
  the first fit of a new model, which traces the step; `warm`: the next fit
  of the same model), `fit_time` (the whole 3-epoch fit),
  `setup_vs_10_plain_steps_{cold,warm}` (what DP adds to the time to the first
  batch, over 10 plain steps: the target is below 1; below 0, DP reaches its
  first batch sooner than plain Keras) and `accounting_per_epoch` (time in
  the ledger during the fit, per epoch, over a 30-step DP epoch: the target
  is below 0.05).
- `noise/*`: one step's noise for the MLP's 269,322 weights: the host route
  (`ExactGaussianNoise.add`: AES-CTR and the exactly rounded Gaussian
  mechanism; `-draw`, the part that does not depend on the gradient, which
  the engine draws one step ahead in a thread, and `-in-step`, the rest), the
  device route's words and its transform run by the backend on CPU (XLA under
  TensorFlow), and, for scale, numpy's PCG64 float32 normal plus an add
  (neither secure nor exact).
- `input-check/finite`: the central non-finite check of the fit's inputs,
  over one plain step (it runs once per fit).

Keras fixes its backend at import: each backend runs in its own interpreter
(`python -m benchmarks.suites.dpsgd --backend torch` prints its rows as JSON).
Targets: DP / plain step <= 1.3 (MLP), <= 1.6 (CNN). The rows name the CPU;
the machine is shared by a team, so the paired ratios are the numbers to read.
"""

from __future__ import annotations

import statistics
import time
import warnings

from benchmarks.rows import cpu, print_backend_rows, rows_per_keras_backend

SUITE = "dpsgd"
BACKENDS = ("tensorflow", "torch")
BATCH = 256
FIT_STEPS, FIT_EPOCHS = 30, 3


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


def _timer(keras, skip_first_epoch: bool):
    class StepTimer(keras.callbacks.Callback):
        """Step intervals, and the time from `start` to the end of the first batch."""

        def __init__(self):
            super().__init__()
            self.samples, self.last, self.epoch = [], None, 0
            self.start, self.first = time.perf_counter(), None

        def on_epoch_begin(self, epoch, logs=None):
            self.last, self.epoch = None, epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.first is None:
                self.first = now - self.start
            if self.last is not None and (self.epoch > 0 or not skip_first_epoch):
                self.samples.append(now - self.last)
            self.last = now

    return StepTimer()


def _model(keras, pk, make, privacy, noise_route=None):
    model = pk.PrivateSequential(make(keras))
    kwargs = {} if privacy is None else {"privacy": privacy}
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    if noise_route is not None:
        model.engine.noise_route = noise_route
    return model


def _fit(keras, model, x, y, epochs: int, skip_first_epoch: bool = True):
    timer = _timer(keras, skip_first_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    return timer, time.perf_counter() - timer.start


def _paired(values: list[float], base: list[float]) -> dict:
    ratios = [v / b for v, b in zip(values, base)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "paired_ratio_median": statistics.median(ratios),
        "paired_ratio_quartiles": [quartiles[0], quartiles[2]],
    }


def _variants(pk, name: str) -> dict:
    """label -> (policy, noise route) of the DP variants timed for model `name`."""
    sigma = 1.1
    variants = {"dp-poisson": (pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=sigma), None)}
    if name.startswith("mlp"):
        shuffle = pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=sigma, sampling="shuffle")
        variants["dp-shuffle"] = (shuffle, None)
        variants["dp-device-noise"] = (shuffle, "device")
    return variants


def _step_rows(keras, pk, np, row, quick: bool) -> list[dict]:
    backend = keras.backend.backend()
    steps, epochs, rounds = (10, 2, 2) if quick else (20, 2, 8)
    rng = np.random.default_rng(0)
    x = rng.random((steps * BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, steps * BATCH)
    rows = []
    for name, make in MODELS.items():
        keras.utils.set_random_seed(0)
        plain = _model(keras, pk, make, None)
        private = {
            label: _model(keras, pk, make, policy, route)
            for label, (policy, route) in _variants(pk, name).items()
        }
        rounds_of = {"plain": [], **{label: [] for label in private}}
        for _ in range(rounds):
            rounds_of["plain"].append(
                statistics.median(_fit(keras, plain, x, y, epochs)[0].samples)
            )
            for label, model in private.items():
                timer, _ = _fit(keras, model, x, y, epochs)
                rounds_of[label].append(statistics.median(timer.samples))
        base = statistics.median(rounds_of["plain"])
        rows.append(
            row(SUITE, f"{backend}/{name}/plain", "step_time", base * 1e3, "ms", batch=BATCH)
        )
        for label in private:
            rows.append(
                row(
                    SUITE,
                    f"{backend}/{name}/{label}",
                    "step_time",
                    statistics.median(rounds_of[label]) * 1e3,
                    "ms",
                    baseline=base * 1e3,
                    batch=BATCH,
                    rounds=rounds,
                    **_paired(rounds_of[label], rounds_of["plain"]),
                )
            )
    return rows


class _LedgerClock:
    """Accumulates the time spent in the ledger (recording steps, computing epsilon)."""

    def __init__(self):
        from privkeras.backends.dpsgd.accountant import PrivacyLedger

        self.ledger, self.seconds, self._saved = PrivacyLedger, 0.0, {}

    def __enter__(self):
        for name in ("record", "running"):
            original = self._saved[name] = getattr(self.ledger, name)

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            setattr(self.ledger, name, timed)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(self.ledger, name, original)


def _fit_rows(keras, pk, np, row, quick: bool) -> list[dict]:
    """Whole 3-epoch fits of the MLP, 30 steps per epoch: cold and warm, plain and DP."""
    backend = keras.backend.backend()
    rounds = 2 if quick else 5
    n = FIT_STEPS * BATCH
    rng = np.random.default_rng(1)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    labels = {
        "plain": (None, None),
        "dp-poisson": (pk.DPSGD(noise_multiplier=1.1, delta=1e-5), None),
        "dp-shuffle": (pk.DPSGD(noise_multiplier=1.1, delta=1e-5, sampling="shuffle"), None),
    }
    got = {label: {k: [] for k in ("cold", "warm", "fit", "step", "ledger")} for label in labels}
    for _ in range(rounds):
        for label, (policy, route) in labels.items():
            keras.utils.set_random_seed(0)
            model = _model(keras, pk, _mlp, policy, route)
            with _LedgerClock() as clock:
                cold, _ = _fit(keras, model, x, y, FIT_EPOCHS, skip_first_epoch=False)
                before = clock.seconds
                warm, total = _fit(keras, model, x, y, FIT_EPOCHS, skip_first_epoch=False)
            record = got[label]
            record["cold"].append(cold.first)
            record["warm"].append(warm.first)
            record["fit"].append(total)
            record["step"].append(statistics.median(warm.samples))
            record["ledger"].append((clock.seconds - before) / FIT_EPOCHS)
    plain = got["plain"]
    plain_step = statistics.median(plain["step"])
    rows = []
    for label, record in got.items():
        case = f"{backend}/mlp-784-256-256-10/{label}"
        baseline = None if label == "plain" else plain
        for metric, key in (("first_batch_cold", "cold"), ("first_batch_warm", "warm")):
            rows.append(
                row(
                    SUITE,
                    case,
                    metric,
                    statistics.median(record[key]) * 1e3,
                    "ms",
                    baseline=None if baseline is None else statistics.median(baseline[key]) * 1e3,
                    steps_per_epoch=FIT_STEPS,
                )
            )
        rows.append(
            row(
                SUITE,
                case,
                "fit_time",
                statistics.median(record["fit"]),
                "s",
                baseline=None if baseline is None else statistics.median(plain["fit"]),
                epochs=FIT_EPOCHS,
                steps_per_epoch=FIT_STEPS,
                **({} if baseline is None else _paired(record["fit"], plain["fit"])),
            )
        )
        if baseline is None:
            continue
        step = statistics.median(record["step"])
        for kind in ("cold", "warm"):
            extra = statistics.median(record[kind]) - statistics.median(plain[kind])
            rows.append(
                row(
                    SUITE,
                    case,
                    f"setup_vs_10_plain_steps_{kind}",
                    extra / (10 * plain_step),
                    "ratio",
                    extra_ms=extra * 1e3,
                    plain_step_ms=plain_step * 1e3,
                    target="< 1",
                )
            )
        epoch = FIT_STEPS * step
        accounting = statistics.median(record["ledger"])
        rows.append(
            row(
                SUITE,
                case,
                "accounting_per_epoch",
                accounting / epoch,
                "ratio",
                accounting_ms=accounting * 1e3,
                epoch_ms=epoch * 1e3,
                target="< 0.05",
            )
        )
    return rows


def _noise_rows(keras, np, row, quick: bool) -> list[dict]:
    """One step's noise for the MLP's weights, on each route, against numpy's PCG64."""
    from benchmarks.rows import timeit
    from privkeras.backends.dpsgd.noise import ExactGaussianNoise, NoiseWords
    from privkeras.core.random import SecureStream

    backend = keras.backend.backend()
    size = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    repeat = 20 if quick else 200
    std = 1.1 / BATCH
    rng = np.random.default_rng(2)
    x = (rng.normal(size=size) * 1e-3).astype(np.float32)
    generator = np.random.default_rng()

    def pcg64():
        return x + generator.standard_normal(size, dtype=np.float32) * np.float32(std)

    host = ExactGaussianNoise(size, std, SecureStream())
    words = NoiseWords(size, SecureStream(), buffers=2)
    device = _device_route(backend, words, x, std, size)
    rows = []
    for _ in range(1 if quick else 3):  # interleaved
        base = timeit(pcg64, repeat=repeat)
        draw = host.draw()
        rows_now = {
            "host-exact": timeit(lambda: host.add(x), repeat=repeat),
            "host-exact-draw": timeit(host.draw, repeat=repeat),
            "host-exact-in-step": timeit(lambda d=draw: host.round_exactly(d, x), repeat=repeat),
            "device-words": timeit(words.take, repeat=repeat),
            "device-transform": timeit(device, repeat=repeat),
        }
        rows.append((base, rows_now))
    base = statistics.median(b for b, _ in rows)
    out = []
    for label in rows[0][1]:
        values = [r[label] for _, r in rows]
        out.append(
            row(
                SUITE,
                f"{backend}/noise/{label}",
                "time_per_step",
                statistics.median(values) * 1e3,
                "ms",
                baseline=base * 1e3,
                samples=size,
                baseline_is="numpy PCG64 float32 normal + add (not secure, not exact)",
            )
        )
    return out


def _device_route(backend: str, words, x, std: float, size: int):
    """The device route's step on CPU tensors: words -> float64 N -> RN32(x + std N)."""
    from privkeras.backends.dpsgd.noise import gaussian_from_words

    if backend == "tensorflow":
        import tensorflow as tf

        from privkeras.backends.dpsgd.tensorflow import TensorFlowWordOps

        @tf.function(jit_compile=True)
        def step(w, values):
            normal = gaussian_from_words(w, size, TensorFlowWordOps)
            return tf.cast(tf.cast(values, tf.float64) + normal * std, tf.float32)

        tensor = tf.constant(x)
        return lambda: step(tf.constant(words.take()), tensor).numpy()
    import torch

    from privkeras.backends.dpsgd.torch import TorchWordOps

    tensor = torch.from_numpy(x)

    def step():
        w = torch.from_numpy(words.take().view("int64"))
        normal = gaussian_from_words(w, size, TorchWordOps)
        return (tensor.double() + normal * std).float()

    return step


def _input_check_rows(keras, np, row, plain_step_ms: float) -> list[dict]:
    try:
        from privkeras.backends.validation import check_finite
    except ImportError:  # the central input check is not there yet
        return []
    from benchmarks.rows import timeit

    x = np.random.default_rng(3).random((FIT_STEPS * BATCH, 28, 28, 1), dtype=np.float32)
    seconds = timeit(lambda: check_finite(x, "x"), repeat=20)
    return [
        row(
            SUITE,
            f"{keras.backend.backend()}/input-check/finite",
            "time_per_fit",
            seconds * 1e3,
            "ms",
            baseline=plain_step_ms,
            baseline_is="one plain MLP step",
            examples=FIT_STEPS * BATCH,
        )
    ]


def measure_backend(quick: bool) -> list[dict]:
    """Rows for the Keras backend of this interpreter."""
    import keras
    import numpy as np

    import privkeras as pk
    from benchmarks.rows import row

    cpu_label = cpu()

    def with_cpu(*args, **kwargs):
        return row(*args, cpu=cpu_label, **kwargs)

    rows = _step_rows(keras, pk, np, with_cpu, quick)
    rows += _fit_rows(keras, pk, np, with_cpu, quick)
    rows += _noise_rows(keras, np, with_cpu, quick)
    plain_step = next(r["value"] for r in rows if r["case"].endswith("mlp-784-256-256-10/plain"))
    rows += _input_check_rows(keras, np, with_cpu, plain_step)
    return rows


def run(quick: bool) -> list[dict]:
    """Both backends, each in a subprocess with its own Keras backend."""
    return rows_per_keras_backend("benchmarks.suites.dpsgd", BACKENDS, quick)


if __name__ == "__main__":
    print_backend_rows(BACKENDS, measure_backend)
