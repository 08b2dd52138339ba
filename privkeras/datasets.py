"""Small datasets that ship with scikit-learn (no download), split and scaled."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "breast_cancer", "digits"]


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    # Data shuffling is not a secret: a seeded numpy generator is right here.
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def breast_cancer(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Wisconsin breast cancer (569 x 30), standardized with training statistics.

    Labels are float32 in {0, 1}, shaped (n, 1).
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    split = _split(
        data.data.astype(np.float64), data.target.astype(np.float32), test_fraction, seed
    )
    mean, std = split.x_train.mean(0), split.x_train.std(0) + 1e-12
    return Split(
        ((split.x_train - mean) / std).astype(np.float32),
        split.y_train.reshape(-1, 1),
        ((split.x_test - mean) / std).astype(np.float32),
        split.y_test.reshape(-1, 1),
    )


def digits(test_fraction: float = 0.25, seed: int = 0, images: bool = False) -> Split:
    """scikit-learn digits (1797 8x8 images), pixels scaled to [0, 1].

    Args:
        images: Return (n, 8, 8, 1) images instead of (n, 64) vectors.

    Labels are int64 class indices in [0, 9].
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return _split(x, data.target.astype(np.int64), test_fraction, seed)
