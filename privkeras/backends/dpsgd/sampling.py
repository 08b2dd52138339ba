"""Batch sampling for DP-SGD: Poisson (what the accountant assumes) or shuffling.

- `"poisson"`: at every step each example joins the batch independently
  with probability `q = batch_size / n`. Batch sizes vary and may be zero;
  the train step accepts any size without recompiling (the batch dimension
  is dynamic), and an empty batch still takes a step: noise only.
- `"shuffle"`: a fresh permutation per epoch cut into batches of
  `batch_size`, as Keras does. The accountant's amplification by
  sampling does not hold for it; the engine then reports an unamplified bound.

Which examples join a batch is part of the privacy mechanism (amplification
by subsampling assumes nobody can predict it), so the samplers draw from the
core's `SecureStream` keyed from `os.urandom`, never from a seedable
generator.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import keras
import numpy as np

from privkeras.core.random import SecureStream
from privkeras.errors import PrivacyPolicyError, format_received

__all__ = [
    "PLACEHOLDER_WEIGHT",
    "BatchSampler",
    "PoissonSampler",
    "SampledBatches",
    "ShuffleSampler",
    "TrainingArrays",
    "make_sampler",
]


#: Sample weight of a placeholder row: it stands for an empty batch, contributes
#: no loss, gradient or metric, and exists because some backends cannot
#: differentiate through empty tensors.
PLACEHOLDER_WEIGHT = -1.0


class _Uniforms:
    """Uniform [0, 1) draws from a `SecureStream` keyed from `os.urandom`."""

    def __init__(self):
        self._stream = SecureStream()

    def uniform(self, n: int) -> np.ndarray:
        return self._stream.uniform(n)

    def permutation(self, n: int) -> np.ndarray:
        return np.argsort(self.uniform(n), kind="stable")


class BatchSampler(abc.ABC):
    """Chooses the examples of each step.

    Args:
        dataset_size: n, the number of training examples.
        batch_size: The (expected) batch size.
        steps_per_epoch: Steps per epoch, or None for `ceil(n / batch_size)`.
    """

    name: ClassVar[str]

    def __init__(self, dataset_size: int, batch_size: int, steps_per_epoch: int | None):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch or math.ceil(dataset_size / batch_size)
        self._uniforms = _Uniforms()

    @property
    def sample_rate(self) -> float:
        """q: the probability that a given example joins a given step."""
        return self.batch_size / self.dataset_size

    def start_epoch(self) -> None:  # noqa: B027 - optional hook
        """Called before each epoch's first batch."""

    @abc.abstractmethod
    def batch(self, index: int) -> np.ndarray:
        """Indices of the examples of step `index` of the epoch."""


class PoissonSampler(BatchSampler):
    """Each example joins each batch independently with probability q."""

    name = "poisson"

    def batch(self, index: int) -> np.ndarray:
        return np.flatnonzero(self._uniforms.uniform(self.dataset_size) < self.sample_rate)


class ShuffleSampler(BatchSampler):
    """A permutation per epoch, cut into consecutive batches of `batch_size`."""

    name = "shuffle"

    def start_epoch(self) -> None:
        self._order = self._uniforms.permutation(self.dataset_size)

    def batch(self, index: int) -> np.ndarray:
        start = (index * self.batch_size) % self.dataset_size
        return self._order[start : start + self.batch_size]


_SAMPLERS: dict[str, type[BatchSampler]] = {
    cls.name: cls for cls in (PoissonSampler, ShuffleSampler)
}


def make_sampler(
    name: str, dataset_size: int, batch_size: int, steps_per_epoch: int | None
) -> BatchSampler:
    """The sampler registered under `name` (`"poisson"` or `"shuffle"`)."""
    if name not in _SAMPLERS:
        raise PrivacyPolicyError(
            f"Expected sampling in {sorted(_SAMPLERS)}. " + format_received(sampling=name)
        )
    return _SAMPLERS[name](dataset_size, batch_size, steps_per_epoch)


class TrainingArrays:
    """Training inputs, targets and per-example weights as aligned numpy arrays.

    Args:
        x: Inputs, anything `numpy.asarray` accepts, with examples on axis 0.
        y: Targets, aligned with `x`.
        sample_weight: Optional `(n,)` weights.
        class_weight: Optional `{class: weight}`, folded into the weights as Keras does.

    Raises:
        PrivacyPolicyError: For missing targets, misaligned or empty arrays,
            or a data set / generator (Poisson sampling needs indexable arrays).
    """

    def __init__(self, x: Any, y: Any, sample_weight: Any = None, class_weight: Any = None):
        if y is None or _is_stream(x):
            raise PrivacyPolicyError(
                "DP-SGD samples its own batches, so it expected x and y as arrays (numpy "
                "arrays or tensors with examples on axis 0). "
                + format_received(x=type(x).__name__, y=type(y).__name__)
            )
        self.x = _floatx(np.asarray(x))
        self.y = _floatx(np.asarray(y))
        n = len(self.x)
        if n == 0 or len(self.y) != n:
            raise PrivacyPolicyError(
                "Expected x and y to hold the same number (> 0) of examples. "
                + format_received(x_examples=n, y_examples=len(self.y))
            )
        weights = np.ones(n, dtype=keras.config.floatx())
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=keras.config.floatx())
            if sample_weight.shape != (n,):
                raise PrivacyPolicyError(
                    f"Expected sample_weight of shape ({n},). "
                    + format_received(sample_weight_shape=sample_weight.shape)
                )
            if (sample_weight < 0).any() or not np.isfinite(sample_weight).all():
                raise PrivacyPolicyError(
                    "Expected sample_weight >= 0 and finite. "
                    + format_received(smallest=float(np.nanmin(sample_weight)))
                )
            weights = weights * sample_weight
        if class_weight:
            labels = self.y.reshape(n, -1)
            labels = labels.argmax(1) if labels.shape[1] > 1 else labels[:, 0].round()
            weights = weights * np.array(
                [class_weight.get(int(c), 1.0) for c in labels], dtype=weights.dtype
            )
        self.sample_weight = weights

    def __len__(self) -> int:
        return len(self.x)

    def split(self, validation_split: float) -> tuple[TrainingArrays, tuple]:
        """Keras's `validation_split`: the last fraction becomes validation data."""
        if not 0 < validation_split < 1:
            raise PrivacyPolicyError(
                "Expected validation_split in [0, 1). "
                + format_received(validation_split=validation_split)
            )
        cut = int(len(self) * (1.0 - validation_split))
        validation = (self.x[cut:], self.y[cut:], self.sample_weight[cut:])
        self.x, self.y, self.sample_weight = self.x[:cut], self.y[:cut], self.sample_weight[:cut]
        return self, validation

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[indices], self.y[indices], self.sample_weight[indices]


def _is_stream(x: Any) -> bool:
    return (
        x is None
        or isinstance(x, (Iterator, keras.utils.PyDataset))
        or (type(x).__module__.startswith(("tensorflow.python.data", "torch.utils.data")))
    )


def _floatx(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating) and array.dtype != keras.config.floatx():
        return array.astype(keras.config.floatx())
    return array


class SampledBatches(keras.utils.PyDataset):
    """The sampler's batches as a Keras `PyDataset` (one fresh draw per step).

    Args:
        arrays: The training arrays.
        sampler: Chooses each step's examples.
        pad_empty: Send an empty batch as one placeholder row of weight
            `PLACEHOLDER_WEIGHT` (for backends that cannot handle empty ones).
    """

    def __init__(self, arrays: TrainingArrays, sampler: BatchSampler, pad_empty: bool = False):
        super().__init__()
        self.arrays = arrays
        self.sampler = sampler
        self.pad_empty = pad_empty

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def __getitem__(self, index: int):
        indices = self.sampler.batch(index)
        if len(indices) or not self.pad_empty:
            return self.arrays.take(indices)
        x, y, weights = self.arrays.take(np.zeros(1, dtype=np.int64))
        return x, y, np.full_like(weights, PLACEHOLDER_WEIGHT)

    def on_epoch_begin(self) -> None:
        self.sampler.start_epoch()

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of batch `index` of the epoch, and whether the batch is a
        placeholder (empty, with `pad_empty`); starts a new epoch at index 0.

        For pipelines that call by index and gather themselves (tf.data).
        """
        if index == 0:
            self.sampler.start_epoch()
        indices = self.sampler.batch(index)
        if len(indices) or not self.pad_empty:
            return indices.astype(np.int64), np.bool_(False)
        return np.zeros(1, dtype=np.int64), np.bool_(True)
