"""Differentially private training of a small CNN on scikit-learn's digits, offline.

The model is declared and trained exactly as in Keras; `privacy=DPSGD(...)`
makes every step clip each example's gradient, add Gaussian noise and count
the privacy spent. The progress bar and `History` show epsilon; the report
says what it assumes.

Run:
    python examples/dp_sgd.py                  # one private run, accuracy and epsilon
    python examples/dp_sgd.py --target 2.0     # noise calibrated to epsilon = 2
    python examples/dp_sgd.py --plot docs/img/dp-sgd-privacy-utility.png
                                               # accuracy against epsilon, a few noise levels
"""

from __future__ import annotations

import argparse
import warnings

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets

EPOCHS, BATCH_SIZE, DELTA = 30, 64, 1e-4  # 1347 training digits: delta < 1/n
SEEDS = (0, 1)


def digits_cnn() -> pk.PrivateSequential:
    """8x8 digits -> 10 classes. GroupNormalization, not BatchNormalization (DP-SGD)."""
    return pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.GroupNormalization(groups=4),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def train(privacy, seed: int = 0, verbose: int = 0) -> tuple[float, dict | None]:
    """Test accuracy and privacy report of one run (`privacy=None`: plain Keras)."""
    keras.utils.set_random_seed(seed)
    data = datasets.digits(images=True)
    model = digits_cnn()
    # Clipped gradients are small: DP-SGD takes a larger step than plain training.
    learning_rate = 0.5 if privacy is not None else 0.05
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        privacy=privacy,
    )
    model.fit(data.x_train, data.y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=verbose)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    return float(accuracy), (model.privacy_report() if privacy is not None else None)


def one_run(noise: float | None, target: float | None) -> None:
    policy = pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=noise, target_epsilon=target, delta=DELTA)
    accuracy, report = train(policy, verbose=2)
    print(
        f"test accuracy {accuracy:.3f}; epsilon {report['epsilon']:.2f} at delta "
        f"{report['delta']:g} ({report['accountant_delta']:g} for the accountant, "
        f"{report['sampler_delta']:.1e} for the noise sampler)"
    )
    keys = ("steps", "sample_rate", "noise_multiplier", "accountant", "epsilon_assumes", "noise")
    for key in keys:
        print(f"  {key}: {report[key]}")
    print(f"  clipping: {report['clipping']}")


def privacy_utility_plot(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain, _ = train(None)
    print(f"non-private: test accuracy {plain:.3f}")
    points = []
    for noise in (0.7, 1.0, 1.5, 2.5, 4.0):
        runs = [
            train(pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=noise, delta=DELTA), seed)
            for seed in SEEDS
        ]
        accuracy = [a for a, _ in runs]
        epsilon = runs[0][1]["epsilon"]  # the same for every seed
        points.append((epsilon, float(np.mean(accuracy)), noise, min(accuracy), max(accuracy)))
        print(
            f"noise {noise:4.1f}: epsilon {epsilon:6.2f}, test accuracy "
            f"{np.mean(accuracy):.3f} (seeds: {', '.join(f'{a:.3f}' for a in accuracy)})"
        )
    epsilons, accuracies, _, lows, highs = map(np.array, zip(*points))
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(
        epsilons,
        accuracies,
        yerr=[accuracies - lows, highs - accuracies],
        fmt="o-",
        capsize=3,
        label=f"DP-SGD (privkeras), mean of {len(SEEDS)} seeds",
    )
    for eps, acc, noise, _, _ in points:
        axis.annotate(
            f"sigma={noise:g}", (eps, acc), textcoords="offset points", xytext=(4, -12), fontsize=8
        )
    axis.axhline(plain, color="gray", linestyle="--", label="non-private Keras")
    axis.set_xscale("log")
    axis.set_xlabel(f"epsilon (delta = {DELTA:g}, PLD accountant)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"digits CNN, {EPOCHS} epochs, Poisson batches of {BATCH_SIZE}, C = 1")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise", type=float, default=1.1, help="noise multiplier")
    parser.add_argument("--target", type=float, help="target epsilon (calibrates the noise)")
    parser.add_argument("--plot", metavar="PNG", help="sweep noise levels, save the plot")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    if args.plot:
        privacy_utility_plot(args.plot)
    else:
        one_run(None if args.target else args.noise, args.target)


if __name__ == "__main__":
    main()
