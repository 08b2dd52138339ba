"""The compiled Keras loss, one value per example.

DP-SGD clips each example's gradient, so it needs each example's loss: the
unreduced `Loss.call` of the compiled loss, averaged over any non-batch axes.
A loss that returns one number for the whole batch hides the per-example
losses and is refused before training.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from privkeras.errors import PrivacyPolicyError

__all__ = ["PerExampleLoss"]

#: Reductions whose gradient scale is a mean over the batch: DP-SGD divides the
#: noisy clipped sum by the expected batch size. "sum" divides by one.
MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", None, "none")


def _same_rank(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Keras's alignment of targets and predictions whose ranks differ by a unit axis."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        else:
            y_true = ops.squeeze(y_true, -1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, -1)
        else:
            y_pred = ops.squeeze(y_pred, -1)
    return y_true, y_pred


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a `Loss`, as Keras wraps one given to `compile`."""

    def __init__(self, fn: Any, name: str):
        super().__init__(name=name)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.fn(*_same_rank(y_true, y_pred))


class PerExampleLoss:
    """Per-example losses of the loss given to `compile`.

    Args:
        loss: `model.loss`: a `keras.losses.Loss`, a loss function, or a name.

    Raises:
        PrivacyPolicyError: For no loss, or several (a `Sequential` has one output).
    """

    def __init__(self, loss: Any):
        if isinstance(loss, (list, tuple)) and len(loss) == 1:
            loss = loss[0]
        if loss is None or isinstance(loss, (list, tuple, dict)):
            raise PrivacyPolicyError(
                f"DP-SGD expected the model to be compiled with one loss. Received: loss={loss!r}"
            )
        obj = keras.losses.get(loss)
        if not isinstance(obj, keras.losses.Loss):
            name = loss if isinstance(loss, str) else getattr(obj, "__name__", "loss")
            obj = _FunctionLoss(obj, name=name)
        self.loss = obj
        self.reduction = getattr(obj, "reduction", "sum_over_batch_size")
        if self.reduction not in (*MEAN_REDUCTIONS, "sum"):
            raise PrivacyPolicyError(
                f"Expected the loss reduction to be one of {[*MEAN_REDUCTIONS, 'sum']}. "
                f"Received: reduction={self.reduction!r}"
            )

    @property
    def sums(self) -> bool:
        """Whether the loss sums over the batch (gradient scale 1, not 1/B)."""
        return self.reduction == "sum"

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """`(B,)` losses: `Loss.call`, averaged over non-batch axes, times the weights
        (negative weights count as zero)."""
        dtype = self.loss.dtype
        values = self.loss.call(
            ops.convert_to_tensor(y_true, dtype=dtype), ops.convert_to_tensor(y_pred, dtype=dtype)
        )
        if len(values.shape) > 1:
            values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
        if sample_weight is not None:
            # A negative weight marks a placeholder row (see `sampling.PLACEHOLDER_WEIGHT`).
            values = values * ops.maximum(ops.cast(sample_weight, values.dtype), 0.0)
        return values

    def check(self, model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
        """Checks on two examples that the loss gives one value per example.

        Raises:
            PrivacyPolicyError: When the loss reduces over the batch, or the
                outputs carry a mask.
        """
        from keras.src.backend.common import masking  # Keras keeps masks on tensors.

        count = min(2, len(x))
        predictions = model(x[:count], training=False)
        if masking.get_keras_mask(predictions) is not None:
            raise PrivacyPolicyError(
                "DP-SGD does not apply output masks to the per-example losses (a masked "
                "loss averages over the unmasked positions of the batch). Expected model "
                "outputs without a Keras mask. Received: outputs masked by an earlier layer "
                "(for example Embedding(mask_zero=True))."
            )
        values = self(y[:count], predictions)
        shape = tuple(values.shape)
        if len(shape) != 1 or shape[0] != count:
            raise PrivacyPolicyError(
                "DP-SGD clips each example's gradient, so it needs one loss value per example. "
                f"Expected the loss to return shape ({count},) for {count} examples. Received: "
                f"shape {shape} from loss {self.loss.name!r}. Pass a keras.losses.Loss (its "
                "reduction is fine) or a function that does not average over the batch."
            )
