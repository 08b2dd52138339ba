"""Secure Conv2D: a shared convolution (NHWC input, HWIO kernel) plus a shared bias."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from privkeras.backends.mpc.layers.activations import activation_layers
from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.patches import fold_patches
from privkeras.backends.mpc.layers.registry import (
    refuse_training_options,
    register_secure_layer,
    unsupported,
)

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecureConv2D", "keras_padding"]


def keras_padding(layer: Any, context: LoweringContext) -> str:
    """Keras's `padding` ("valid"/"same") as the kernels spell it ("VALID"/"SAME")."""
    padding = str(layer.padding).upper()
    if padding not in ("VALID", "SAME"):
        raise unsupported(
            layer,
            context,
            f"expected padding 'valid' or 'same'. Received: padding={layer.padding!r}",
        )
    return padding


def require_channels_last(layer: Any, context: LoweringContext) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise unsupported(
            layer,
            context,
            f"expected data_format='channels_last'. Received: data_format={layer.data_format!r}",
        )


class SecureConv2D(SecureLayer):
    """`y = conv2d(x, kernel) + bias` on shares.

    Args:
        name: The Keras layer's name.
        input_shape: `(H, W, C_in)`.
        output_shape: `(OH, OW, C_out)`.
        kernel: Plaintext kernel `(KH, KW, C_in, C_out)`.
        bias: Plaintext bias `(C_out,)`, or None.
        strides: `(SH, SW)`.
        padding: `"VALID"` or `"SAME"`.
        variables: Keras variables the parameters came from, by parameter name.

    The backward pass takes the kernel gradient as one matrix product of the
    input patches with the output gradient, and the input gradient as the
    output gradient times the kernel, folded back with `fold_patches`.
    """

    kind = "Conv2D"

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        kernel: np.ndarray,
        bias: np.ndarray | None,
        strides: tuple[int, int],
        padding: str,
        variables: dict[str, Any] | None = None,
    ):
        super().__init__(name, input_shape, output_shape)
        self.params = {"kernel": np.asarray(kernel, np.float64)}
        if bias is not None:
            self.params["bias"] = np.asarray(bias, np.float64)
        self.strides = tuple(strides)
        self.padding = padding
        self.variables = dict(variables or {})

    @property
    def kernel_size(self) -> tuple[int, int]:
        kh, kw = self.params["kernel"].shape[:2]
        return kh, kw

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        y = x.conv2d(params["kernel"], strides=self.strides, padding=self.padding)
        if "bias" in params:
            y = y + params["bias"]
        return y, (x if training else None)

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ):
        x = cache
        kh, kw, c_in, c_out = self.params["kernel"].shape
        n, oh, ow, _ = grad.shape
        rows = n * oh * ow
        patches = x.extract_patches((kh, kw), self.strides, self.padding)
        cols = patches.reshape((rows, kh * kw * c_in))
        g2 = grad.reshape((rows, c_out))
        grads = {"kernel": (cols.T @ g2).reshape((kh, kw, c_in, c_out))}
        if "bias" in params:
            grads["bias"] = g2.sum(axis=0)
        if not input_grad:
            return None, grads
        kernel2 = params["kernel"].reshape((kh * kw * c_in, c_out))
        dcols = (g2 @ kernel2.T).reshape((n, oh, ow, kh * kw, c_in))
        fold = functools.partial(
            _fold_shares,
            image_shape=x.shape,
            kernel_size=(kh, kw),
            strides=self.strides,
            padding=self.padding,
        )
        return dcols.map_linear(fold), grads

    def fold_affine(self, scale: np.ndarray, shift: np.ndarray) -> SecureConv2D:
        """This layer followed by `y * scale + shift` per output channel, as one layer."""
        kernel = self.params["kernel"] * scale
        bias = self.params.get("bias", np.zeros(kernel.shape[-1])) * scale + shift
        return SecureConv2D(
            self.name, self.input_shape, self.output_shape, kernel, bias, self.strides, self.padding
        )

    def product_bound(self, input_bound: float) -> float:
        per_output = np.sum(np.abs(self.params["kernel"]), axis=(0, 1, 2))
        return float(np.max(per_output)) * input_bound

    def output_bound(self, input_bound: float) -> float:
        bias = self.params.get("bias")
        return self.product_bound(input_bound) + (
            0.0 if bias is None else float(np.max(np.abs(bias), initial=0.0))
        )


def _fold_shares(kernels, share, *, image_shape, kernel_size, strides, padding):
    return fold_patches(kernels, share, image_shape, kernel_size, strides, padding)


@register_secure_layer(keras.layers.Conv2D)
def lower_conv2d(layer: keras.layers.Conv2D, context: LoweringContext) -> list[SecureLayer]:
    refuse_training_options(layer, context)
    require_channels_last(layer, context)
    if tuple(layer.dilation_rate) != (1, 1):
        raise unsupported(
            layer, context, f"expected dilation_rate=(1, 1). Received: {tuple(layer.dilation_rate)}"
        )
    if layer.groups != 1:
        raise unsupported(layer, context, f"expected groups=1. Received: groups={layer.groups}")
    padding = keras_padding(layer, context)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
    output_shape = tuple(layer.compute_output_shape((None, *context.input_shape))[1:])
    variables = {}  # a frozen layer (trainable=False) is not updated
    if layer.trainable:
        variables["kernel"] = layer.kernel
        if layer.use_bias:
            variables["bias"] = layer.bias
    conv = SecureConv2D(
        layer.name,
        context.input_shape,
        output_shape,
        kernel,
        bias,
        tuple(layer.strides),
        padding,
        variables,
    )
    return [conv, *activation_layers(layer, layer.activation, output_shape, context)]
