"""Losses for encrypted training: binary and softmax cross-entropy, mean squared error.

A `SecureLoss` never computes the loss value under MPC (training reveals
nothing but the final weights); it gives the gradient the backward pass
starts from. Every loss hands back an *unscaled* per-element delta and a
public `scale` such that

    d(mean loss) / d(outputs or pre-activations) = scale * delta

The optimizer multiplies by `learning_rate * scale` once, which keeps the
shared deltas at full fixed-point precision (a `1 / batch` factor applied
to every delta would throw away log2(batch) bits).

Cross-entropy is fused with the activation in front of it, as Keras does
internally: with a softmax (sigmoid) output, the gradient with respect to the
pre-activation is `probabilities - labels`, which needs neither a logarithm
nor a division under MPC.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from privkeras.backends.mpc.errors import MPCInputError
from privkeras.errors import CapabilityError

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["CrossEntropy", "MeanSquaredError", "SecureLoss", "get_loss", "supported_losses"]


@dataclasses.dataclass(frozen=True)
class SecureLoss:
    """Base class: the gradient side of a Keras loss under MPC.

    Attributes:
        name: The Keras name of the loss.
        from_logits: Whether the model outputs logits (no final activation).
    """

    name: str
    from_logits: bool = False

    def fuses(self, last_activation: str | None) -> bool:
        """Whether the backward pass starts before the model's last activation."""
        return False

    def check_model(self, last_activation: str | None, engine: str) -> None:
        """Refuses (before any work) a model whose output this loss cannot train."""

    def encode_targets(self, y: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        """The targets as a data owner shares them (float64, shaped like the outputs)."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape[1:] != output_shape and y.size == len(y) * math.prod(output_shape):
            y = y.reshape((len(y), *output_shape))
        if y.shape[1:] != output_shape:
            raise MPCInputError(
                f"Expected targets of shape (None, {', '.join(map(str, output_shape))}) for loss "
                f"{self.name!r}. Received: y.shape={y.shape}"
            )
        return y

    def delta(self, outputs: SharedTensor, targets: SharedTensor, fused: bool) -> SharedTensor:
        """The unscaled gradient (see the module docstring)."""
        raise NotImplementedError

    def scale(self, batch: int, output_shape: tuple[int, ...]) -> float:
        """The public factor turning `delta` into the gradient of the mean loss."""
        return 1.0 / (batch * math.prod(output_shape[:-1]))


@dataclasses.dataclass(frozen=True)
class CrossEntropy(SecureLoss):
    """Softmax (categorical, sparse categorical) or sigmoid (binary) cross-entropy.

    Attributes:
        activation: `"softmax"` or `"sigmoid"`.
        sparse: Targets are class indices (one-hot encoded by their owner).
    """

    activation: str = "softmax"
    sparse: bool = False

    def fuses(self, last_activation: str | None) -> bool:
        return not self.from_logits and last_activation == self.activation

    def check_model(self, last_activation: str | None, engine: str) -> None:
        if not self.from_logits and last_activation != self.activation:
            raise CapabilityError(
                f"Engine {engine!r} trains {self.name} with from_logits=False only when the "
                f"model ends in a {self.activation} activation (the gradient is then "
                f"{self.activation}(z) - y). Received a model ending in "
                f"{last_activation or 'no activation'}. Use activation={self.activation!r} "
                f"or from_logits=True."
            )

    def encode_targets(self, y: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        if not self.sparse:
            return super().encode_targets(y, output_shape)
        labels = np.asarray(y)
        classes = output_shape[-1]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or not np.all(np.equal(np.mod(labels, 1), 0)):
            raise MPCInputError(
                f"Expected integer class indices of shape (None,) for {self.name}. "
                f"Received: y.shape={np.shape(y)}"
            )
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise MPCInputError(
                f"Expected class indices in [0, {classes - 1}]. "
                f"Received: values in [{labels.min()}, {labels.max()}]"
            )
        return np.eye(classes, dtype=np.float64)[labels]

    def delta(self, outputs: SharedTensor, targets: SharedTensor, fused: bool) -> SharedTensor:
        if fused:
            return outputs - targets
        probabilities = (
            outputs.softmax(axis=-1) if self.activation == "softmax" else outputs.sigmoid()
        )
        return probabilities - targets

    def scale(self, batch: int, output_shape: tuple[int, ...]) -> float:
        if self.activation == "softmax":  # summed over classes, averaged over the rest
            return 1.0 / (batch * math.prod(output_shape[:-1]))
        return 1.0 / (batch * math.prod(output_shape))  # averaged over the last axis too


@dataclasses.dataclass(frozen=True)
class MeanSquaredError(SecureLoss):
    """Mean over the last axis of (outputs - targets)^2, averaged over the batch."""

    def delta(self, outputs: SharedTensor, targets: SharedTensor, fused: bool) -> SharedTensor:
        return outputs - targets

    def scale(self, batch: int, output_shape: tuple[int, ...]) -> float:
        return 2.0 / (batch * math.prod(output_shape))


#: Keras loss name -> constructor of its secure version.
_LOSSES: dict[str, Callable[[bool], SecureLoss]] = {
    "binary_crossentropy": lambda logits: CrossEntropy(
        "binary_crossentropy", logits, activation="sigmoid"
    ),
    "categorical_crossentropy": lambda logits: CrossEntropy(
        "categorical_crossentropy", logits, activation="softmax"
    ),
    "sparse_categorical_crossentropy": lambda logits: CrossEntropy(
        "sparse_categorical_crossentropy", logits, activation="softmax", sparse=True
    ),
    "mean_squared_error": lambda logits: MeanSquaredError("mean_squared_error"),
}

_ALIASES = {
    "mse": "mean_squared_error",
    "MeanSquaredError": "mean_squared_error",
    "BinaryCrossentropy": "binary_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy",
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
}

_LOSS_CLASSES = {
    keras.losses.BinaryCrossentropy: "binary_crossentropy",
    keras.losses.CategoricalCrossentropy: "categorical_crossentropy",
    keras.losses.SparseCategoricalCrossentropy: "sparse_categorical_crossentropy",
    keras.losses.MeanSquaredError: "mean_squared_error",
}


def supported_losses() -> list[str]:
    """Keras names of the losses the MPC engines train with."""
    return sorted(_LOSSES)


def _refuse(loss: Any, engine: str, why: str = "") -> CapabilityError:
    return CapabilityError(
        f"Engine {engine!r} cannot train with loss {loss!r}{why}. "
        f"Supported losses: {supported_losses()} (or their keras.losses classes)."
    )


def get_loss(loss: Any, engine: str) -> SecureLoss:
    """The secure version of a compiled Keras loss.

    Args:
        loss: What was passed to `compile(loss=...)`: a name, a
            `keras.losses.Loss` or a Keras loss function.
        engine: The engine name, for messages.

    Raises:
        CapabilityError: For a loss (or loss option) without a secure version.
    """
    if isinstance(loss, str):
        name = _ALIASES.get(loss, loss)
        if name not in _LOSSES:
            raise _refuse(loss, engine)
        return _LOSSES[name](False)
    if isinstance(loss, keras.losses.Loss):
        name = _LOSS_CLASSES.get(type(loss))
        if name is None:
            raise _refuse(type(loss).__name__, engine)
        config = loss.get_config()
        for key, default in (("label_smoothing", 0.0), ("reduction", "sum_over_batch_size")):
            if key in config and config[key] != default:
                raise _refuse(name, engine, f" with {key}={config[key]!r} (expected {default!r})")
        if config.get("axis", -1) != -1:
            raise _refuse(name, engine, f" with axis={config['axis']!r} (expected -1)")
        return _LOSSES[name](bool(config.get("from_logits", False)))
    function_name = getattr(loss, "__name__", None)
    if callable(loss) and function_name in _LOSSES:
        return _LOSSES[function_name](False)
    raise _refuse(loss, engine)
