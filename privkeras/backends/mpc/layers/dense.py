"""Secure Dense: a shared matrix product plus a shared bias."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from privkeras.backends.mpc.layers.activations import activation_layers
from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.registry import (
    refuse_training_options,
    register_secure_layer,
    unsupported,
)

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecureDense"]


class SecureDense(SecureLayer):
    """`y = x @ kernel + bias` on shares, over the last axis of `x`.

    Args:
        name: The Keras layer's name.
        input_shape: Input shape without the batch axis (last axis: units in).
        kernel: Plaintext kernel, shape `(units_in, units_out)`.
        bias: Plaintext bias `(units_out,)`, or None.
        variables: Keras variables the parameters came from, by parameter name
            (empty when the parameters were folded and cannot be written back).
    """

    kind = "Dense"

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, ...],
        kernel: np.ndarray,
        bias: np.ndarray | None,
        variables: dict[str, Any] | None = None,
    ):
        super().__init__(name, input_shape, (*input_shape[:-1], kernel.shape[1]))
        self.params = {"kernel": np.asarray(kernel, np.float64)}
        if bias is not None:
            self.params["bias"] = np.asarray(bias, np.float64)
        self.variables = dict(variables or {})

    def _flat(self, x: SharedTensor, units: int) -> SharedTensor:
        rows = math.prod(x.shape[:-1])
        return x if x.ndim == 2 else x.reshape((rows, units))

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        kernel = params["kernel"]
        x2 = self._flat(x, kernel.shape[0])
        y = x2 @ kernel
        if "bias" in params:
            y = y + params["bias"]
        if x.ndim != 2:
            y = y.reshape((*x.shape[:-1], kernel.shape[1]))
        return y, (x2 if training else None)

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ):
        kernel = params["kernel"]
        x2 = cache
        g2 = self._flat(grad, kernel.shape[1])
        grads = {"kernel": x2.T @ g2}
        if "bias" in params:
            grads["bias"] = g2.sum(axis=0)
        if not input_grad:
            return None, grads
        dx = g2 @ kernel.T
        if grad.ndim != 2:
            dx = dx.reshape((*grad.shape[:-1], kernel.shape[0]))
        return dx, grads

    def fold_affine(self, scale: np.ndarray, shift: np.ndarray) -> SecureDense:
        """This layer followed by `y * scale + shift` per output unit, as one layer."""
        kernel = self.params["kernel"] * scale[None, :]
        bias = self.params.get("bias", np.zeros(kernel.shape[1])) * scale + shift
        return SecureDense(self.name, self.input_shape, kernel, bias)

    def product_bound(self, input_bound: float) -> float:
        return float(np.max(np.sum(np.abs(self.params["kernel"]), axis=0))) * input_bound

    def output_bound(self, input_bound: float) -> float:
        bias = self.params.get("bias")
        return self.product_bound(input_bound) + (
            0.0 if bias is None else float(np.max(np.abs(bias), initial=0.0))
        )


@register_secure_layer(keras.layers.Dense)
def lower_dense(layer: keras.layers.Dense, context: LoweringContext) -> list[SecureLayer]:
    refuse_training_options(layer, context)
    if getattr(layer, "quantization_mode", None):
        raise unsupported(
            layer,
            context,
            f"quantized Dense layers are not supported "
            f"(quantization_mode={layer.quantization_mode!r})",
        )
    if getattr(layer, "lora_enabled", False):
        raise unsupported(layer, context, "LoRA-enabled Dense layers are not supported")
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
    variables = {}  # a frozen layer (trainable=False) is not updated
    if layer.trainable:
        variables["kernel"] = layer.kernel
        if layer.use_bias:
            variables["bias"] = layer.bias
    dense = SecureDense(layer.name, context.input_shape, kernel, bias, variables)
    return [dense, *activation_layers(layer, layer.activation, dense.output_shape, context)]
