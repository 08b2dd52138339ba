"""Encrypted logistic regression on a genetics-like table (synthetic, offline).

Three research sites each hold genotypes (0, 1 or 2 copies of the minor allele
at 50 variants) and a case/control label for their own participants. A
handful of variants raise the risk. The sites secret-share their rows and
train one logistic regression together; the coordinator (model owner) gets
the combined model and nothing else.

Run: python examples/mpc_logistic_regression.py
"""

import time

import keras
import numpy as np

import privkeras as pk

VARIANTS = 50
CAUSAL = {3: 0.9, 11: -0.7, 27: 0.6, 40: 0.8}  # variant -> log-odds per allele


def synthetic_cohort(participants: int, rng: np.random.Generator):
    """Genotypes from Hardy-Weinberg with per-variant allele frequencies; logistic labels."""
    frequencies = rng.uniform(0.05, 0.5, VARIANTS)
    genotypes = rng.binomial(2, frequencies, size=(participants, VARIANTS)).astype("float32")
    logits = -0.5 + sum(beta * (genotypes[:, v] - 2 * frequencies[v]) for v, beta in CAUSAL.items())
    labels = (rng.uniform(size=participants) < 1 / (1 + np.exp(-logits))).astype("float32")
    return genotypes, labels.reshape(-1, 1)


def main() -> None:
    rng = np.random.default_rng(7)  # synthetic data, not a secret
    x, y = synthetic_cohort(1500, rng)
    # Public standardization constants (e.g. published allele frequencies).
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x_test, y_test = x[1200:], y[1200:]
    sites = pk.SharedData(
        [(x[:500], y[:500]), (x[500:800], y[500:800]), (x[800:1200], y[800:1200])],
        owners=["site_a", "site_b", "site_c"],
    )
    accuracies = {}
    for privacy in ("mpc", None):  # the same schedule, encrypted and in plaintext
        keras.utils.set_random_seed(0)
        model = pk.PrivateSequential(
            [keras.Input((VARIANTS,)), keras.layers.Dense(1, activation="sigmoid")]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss="binary_crossentropy",
            metrics=["accuracy"],
            privacy=privacy,
        )
        start = time.perf_counter()
        if privacy is None:
            model.fit(x[:1200], y[:1200], epochs=30, batch_size=1200, shuffle=False, verbose=0)
        else:
            model.fit(sites, epochs=30, batch_size=len(sites), verbose=0)  # full-batch GD
            seconds = time.perf_counter() - start
            weights = model.layers[0].kernel.numpy()[:, 0]
            top = np.argsort(-np.abs(weights))[: len(CAUSAL)]
        accuracies[privacy] = model.keras_evaluate(x_test, y_test, verbose=0)[1]

    print(f"trained on {len(sites)} secret-shared rows from 3 sites in {seconds:.1f} s")
    print(f"variants with the largest weights: {sorted(top.tolist())} (causal: {sorted(CAUSAL)})")
    print(
        f"held-out accuracy: {accuracies['mpc']:.3f} encrypted, "
        f"{accuracies[None]:.3f} plaintext with the same schedule"
    )


if __name__ == "__main__":
    main()
