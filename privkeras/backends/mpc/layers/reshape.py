"""Secure Flatten and Reshape: local relabelling of every share, no communication."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.conv import require_channels_last
from privkeras.backends.mpc.layers.registry import register_secure_layer, unsupported

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecureReshape"]


class SecureReshape(SecureLayer):
    """Reshapes every example (the batch axis is kept)."""

    kind = "Reshape"

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        return x.reshape((x.shape[0], *self.output_shape)), None

    def backward(self, grad, cache, params, input_grad: bool = True):
        return grad.reshape((grad.shape[0], *self.input_shape)), {}

    def output_bound(self, input_bound: float) -> float:
        return input_bound


@register_secure_layer(keras.layers.Flatten)
def lower_flatten(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    require_channels_last(layer, context)
    return [SecureReshape(layer.name, context.input_shape, (math.prod(context.input_shape),))]


@register_secure_layer(keras.layers.Reshape)
def lower_reshape(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    output_shape = tuple(layer.compute_output_shape((1, *context.input_shape))[1:])
    if None in output_shape or math.prod(output_shape) != math.prod(context.input_shape):
        raise unsupported(
            layer,
            context,
            f"cannot reshape {context.input_shape} to target_shape={layer.target_shape}",
        )
    return [SecureReshape(layer.name, context.input_shape, output_shape)]
