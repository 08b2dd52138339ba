"""BatchNormalization at inference, folded into the Dense or Conv2D before it.

At inference, batch normalization is the per-channel affine map
`y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`.
The model owner folds it into the preceding layer's kernel and bias in
plaintext before sharing, so it costs nothing under MPC.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.registry import register_secure_layer, unsupported

__all__ = ["batch_norm_affine"]


def batch_norm_affine(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """The inference-time `(scale, shift)` of a BatchNormalization layer, in float64."""

    def value(variable: Any, default: float) -> np.ndarray:
        if variable is None:
            return np.full(layer.moving_mean.shape, default, dtype=np.float64)
        return keras.ops.convert_to_numpy(variable).astype(np.float64)

    gamma = value(layer.gamma if layer.scale else None, 1.0)
    beta = value(layer.beta if layer.center else None, 0.0)
    mean = value(layer.moving_mean, 0.0)
    variance = value(layer.moving_variance, 1.0)
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale, beta - mean * scale


@register_secure_layer(keras.layers.BatchNormalization)
def lower_batch_normalization(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    if context.training:
        raise unsupported(
            layer,
            context,
            "batch normalization is supported at inference only (folded into the previous "
            "layer); training would need secure batch statistics",
        )
    axis = layer.axis if isinstance(layer.axis, int) else None
    if axis not in (-1, len(context.input_shape)):
        raise unsupported(layer, context, f"expected axis=-1. Received: axis={layer.axis!r}")
    previous = context.program[-1] if context.program else None
    fold = getattr(previous, "fold_affine", None)
    if fold is None:
        after = "nothing" if previous is None else f"{previous.name!r} ({previous.kind})"
        raise unsupported(
            layer,
            context,
            "it must directly follow a Dense or Conv2D layer without activation, to be folded "
            f"into it. Received it after {after}",
        )
    context.program[-1] = fold(*batch_norm_affine(layer))
    return []
