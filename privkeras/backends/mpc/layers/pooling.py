"""Secure pooling: AveragePooling2D, MaxPooling2D, GlobalAveragePooling2D.

Average pooling is linear: a sum of patches times a public 1/count (with
"same" padding the count excludes the padded cells, as Keras does), so it
costs one truncation and no communication. Max pooling uses the runtime's
exact secure maximum, which also returns the one-hot window mask that the
backward pass routes the gradient through.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.conv import keras_padding, require_channels_last
from privkeras.backends.mpc.layers.patches import fold_patches
from privkeras.backends.mpc.layers.registry import register_secure_layer, unsupported
from privkeras.core.kernels import conv_output_padding

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecureAveragePooling2D", "SecureGlobalAveragePooling2D", "SecureMaxPooling2D"]


class _SecurePooling2D(SecureLayer):
    """Shared configuration of windowed 2-D pooling."""

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, ...],
        pool_size: tuple[int, int],
        strides: tuple[int, int],
        padding: str,
    ):
        h, w, c = input_shape
        oh = conv_output_padding(h, pool_size[0], strides[0], padding)[0]
        ow = conv_output_padding(w, pool_size[1], strides[1], padding)[0]
        super().__init__(name, input_shape, (oh, ow, c))
        self.pool_size = tuple(pool_size)
        self.strides = tuple(strides)
        self.padding = padding

    @property
    def window(self) -> int:
        return self.pool_size[0] * self.pool_size[1]

    def _fold(self, patches: SharedTensor, batch: int) -> SharedTensor:
        fold = functools.partial(
            _fold_shares,
            image_shape=(batch, *self.input_shape),
            kernel_size=self.pool_size,
            strides=self.strides,
            padding=self.padding,
        )
        return patches.map_linear(fold)

    def _spread(self, grad: SharedTensor) -> SharedTensor:
        """(N, OH, OW, C) -> (N, OH, OW, KH * KW, C), the gradient copied to each window cell."""
        n, oh, ow, c = grad.shape
        return grad.expand_dims(3).broadcast_to((n, oh, ow, self.window, c))

    def output_bound(self, input_bound: float) -> float:
        return input_bound


class SecureAveragePooling2D(_SecurePooling2D):
    """Mean over each window (padding cells excluded from the count)."""

    kind = "AveragePooling2D"

    def _inverse_counts(self, batch: int) -> float | np.ndarray:
        if self.padding == "VALID":
            return 1.0 / self.window
        from privkeras.core.kernels import get_kernels

        h, w, _ = self.input_shape
        ones = np.ones((1, h, w, 1), dtype=np.int64)
        counts = get_kernels("numpy").extract_patches(ones, self.pool_size, self.strides, "SAME")
        counts = counts.sum(axis=3).astype(np.float64)  # (1, OH, OW, 1)
        return np.broadcast_to(1.0 / counts, (batch, *self.output_shape))

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        patches = x.extract_patches(self.pool_size, self.strides, self.padding)
        return patches.sum(axis=3) * self._inverse_counts(x.shape[0]), None

    def backward(self, grad, cache, params, input_grad: bool = True):
        scaled = grad * self._inverse_counts(grad.shape[0])
        return self._fold(self._spread(scaled), grad.shape[0]), {}

    def product_bound(self, input_bound: float) -> float:
        return input_bound * self.window


class SecureMaxPooling2D(_SecurePooling2D):
    """Maximum over each window by exact secure comparisons."""

    kind = "MaxPooling2D"

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        if not training:
            return x.max_pool2d(self.pool_size, self.strides, self.padding), None
        out, mask = x.max_pool2d_with_mask(self.pool_size, self.strides, self.padding)
        return out, mask

    def backward(self, grad, cache, params, input_grad: bool = True):
        mask = cache
        routed = mask * self._spread(grad).reshape(mask.shape)
        return self._fold(
            routed.reshape((*grad.shape[:3], self.window, grad.shape[3])), grad.shape[0]
        ), {}

    def product_bound(self, input_bound: float) -> float:
        return input_bound


class SecureGlobalAveragePooling2D(SecureLayer):
    """Mean over the spatial axes, optionally keeping them as size-1 axes."""

    kind = "GlobalAveragePooling2D"

    def __init__(self, name: str, input_shape: tuple[int, ...], keepdims: bool):
        channels = input_shape[-1]
        super().__init__(name, input_shape, (1, 1, channels) if keepdims else (channels,))
        self.keepdims = keepdims

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        h, w, _ = self.input_shape
        return x.sum(axis=(1, 2), keepdims=self.keepdims) * (1.0 / (h * w)), None

    def backward(self, grad, cache, params, input_grad: bool = True):
        h, w, c = self.input_shape
        n = grad.shape[0]
        scaled = (grad * (1.0 / (h * w))).reshape((n, 1, 1, c))
        return scaled.broadcast_to((n, h, w, c)), {}

    def output_bound(self, input_bound: float) -> float:
        return input_bound

    def product_bound(self, input_bound: float) -> float:
        h, w, _ = self.input_shape
        return input_bound * h * w


def _fold_shares(kernels, share, *, image_shape, kernel_size, strides, padding):
    return fold_patches(kernels, share, image_shape, kernel_size, strides, padding)


def _window_config(layer: Any, context: LoweringContext) -> dict[str, Any]:
    require_channels_last(layer, context)
    if len(context.input_shape) != 3:
        raise unsupported(
            layer, context, f"expected (H, W, C) inputs. Received: shape={context.input_shape}"
        )
    strides = layer.strides if layer.strides is not None else layer.pool_size
    return {
        "pool_size": tuple(layer.pool_size),
        "strides": tuple(strides),
        "padding": keras_padding(layer, context),
    }


@register_secure_layer(keras.layers.AveragePooling2D)
def lower_average_pooling(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    return [
        SecureAveragePooling2D(layer.name, context.input_shape, **_window_config(layer, context))
    ]


@register_secure_layer(keras.layers.MaxPooling2D)
def lower_max_pooling(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    return [SecureMaxPooling2D(layer.name, context.input_shape, **_window_config(layer, context))]


@register_secure_layer(keras.layers.GlobalAveragePooling2D)
def lower_global_average_pooling(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    require_channels_last(layer, context)
    if len(context.input_shape) != 3 or not math.prod(context.input_shape):
        raise unsupported(
            layer, context, f"expected (H, W, C) inputs. Received: shape={context.input_shape}"
        )
    return [SecureGlobalAveragePooling2D(layer.name, context.input_shape, bool(layer.keepdims))]
