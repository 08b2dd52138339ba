"""Dense, Conv2D, AveragePooling2D, Flatten and Reshape as affine maps.

The matrix of a linear layer is read from Keras itself: the layer is applied
to the zero input (giving the bias) and to every basis vector (giving the
columns). Whatever Keras does (padding modes, strides, data formats, pooling
that averages only valid cells) is therefore what the encrypted model does,
on every Keras backend, with no re-implementation to drift from it.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from privkeras.backends.he.layers import register_he_layer, unsupported
from privkeras.backends.he.steps import AffineStep, Im2col

_PROBE_CHUNK = 1024


def linear_map(layer: Any, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """`(matrix, bias, output_shape)` of a linear (affine) Keras layer, by probing it."""
    n_in = math.prod(input_shape)
    bias = keras.ops.convert_to_numpy(layer(np.zeros((1, *input_shape), np.float32)))
    out_shape = tuple(int(d) for d in bias.shape[1:])
    bias = bias.reshape(-1).astype(np.float64)
    columns = []
    for start in range(0, n_in, _PROBE_CHUNK):
        stop = min(start + _PROBE_CHUNK, n_in)
        basis = np.zeros((stop - start, n_in), np.float32)
        basis[np.arange(stop - start), np.arange(start, stop)] = 1.0
        out = keras.ops.convert_to_numpy(layer(basis.reshape(-1, *input_shape)))
        columns.append(out.reshape(stop - start, -1).astype(np.float64) - bias)
    return np.concatenate(columns, axis=0).T, bias, out_shape


def _check_linear_activation(layer: Any) -> None:
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if activation is not None and name != "linear":
        raise unsupported(
            layer,
            f"its activation {name or activation!r} is not a polynomial; give the layer "
            f"activation=None and add a PolynomialActivation after it",
        )


def _affine(layer: Any, input_shape: tuple[int, ...], im2col: Im2col | None = None) -> AffineStep:
    matrix, bias, out_shape = linear_map(layer, input_shape)
    return AffineStep(matrix, bias, tuple(input_shape), out_shape, (layer.name,), im2col)


@register_he_layer(keras.layers.Dense)
def dense(layer: Any, input_shape: tuple[int, ...]) -> list[AffineStep]:
    _check_linear_activation(layer)
    if (
        len(input_shape) == 1
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    ):
        kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
        bias = (
            keras.ops.convert_to_numpy(layer.bias).astype(np.float64)
            if layer.use_bias
            else np.zeros(kernel.shape[1])
        )
        return [AffineStep(kernel.T, bias, tuple(input_shape), (kernel.shape[1],), (layer.name,))]
    return [_affine(layer, input_shape)]


@register_he_layer(keras.layers.Conv2D)
def conv2d(layer: Any, input_shape: tuple[int, ...]) -> list[AffineStep]:
    _check_linear_activation(layer)
    step = _affine(layer, input_shape)
    patches = _im2col(layer, input_shape)
    if (
        patches is not None
        and np.allclose(
            patches.patch_matrix() @ _gather_matrix(patches.gather, step.matrix.shape[1]),
            step.matrix,
            atol=1e-6,
        )
        and np.allclose(np.tile(patches.bias, patches.positions), step.bias, atol=1e-6)
    ):
        step.im2col = patches  # verified against Keras's own convolution
    return [step]


@register_he_layer(keras.layers.AveragePooling2D, keras.layers.Flatten, keras.layers.Reshape)
def linear_layer(layer: Any, input_shape: tuple[int, ...]) -> list[AffineStep]:
    return [_affine(layer, input_shape)]


# -- im2col for a channels-last Conv2D ------------------------------------------------------
def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return out, total // 2


def _im2col(layer: Any, input_shape: tuple[int, ...]) -> Im2col | None:
    if (
        layer.data_format != "channels_last"
        or getattr(layer, "groups", 1) != 1
        or len(input_shape) != 3
    ):
        return None
    height, width, channels = input_shape
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    dh, dw = layer.dilation_rate
    if layer.padding == "same":
        out_h, top = _same_padding(height, kh, sh, dh)
        out_w, left = _same_padding(width, kw, sw, dw)
    elif layer.padding == "valid":
        out_h, top = (height - (kh - 1) * dh - 1) // sh + 1, 0
        out_w, left = (width - (kw - 1) * dw - 1) // sw + 1, 0
    else:
        return None
    i, j, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    oh, ow = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    rows = oh.reshape(1, -1) * sh + i.reshape(-1, 1) * dh - top
    cols = ow.reshape(1, -1) * sw + j.reshape(-1, 1) * dw - left
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    gather = np.where(inside, (rows * width + cols) * channels + c.reshape(-1, 1), -1)
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    bias = (
        keras.ops.convert_to_numpy(layer.bias).astype(np.float64)
        if layer.use_bias
        else np.zeros(kernel.shape[-1])
    )
    return Im2col(gather, kernel.reshape(-1, kernel.shape[-1]), bias)


def _gather_matrix(gather: np.ndarray, n_in: int) -> np.ndarray:
    """The 0/1 matrix taking flat inputs to patch features `(k, p) -> k * P + p`."""
    flat = gather.reshape(-1)
    matrix = np.zeros((len(flat), n_in))
    valid = flat >= 0
    matrix[np.nonzero(valid)[0], flat[valid]] = 1.0
    return matrix
