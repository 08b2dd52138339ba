"""Ring kernels on TensorFlow int64 tensors (the TF-Encrypted style engine's arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from privkeras.core.kernels.base import RingKernels

__all__ = ["TensorFlowKernels"]


class TensorFlowKernels(RingKernels):
    """tf.int64 arithmetic; TensorFlow's int64 kernels wrap around mod 2^64."""

    name = "tensorflow"

    def from_numpy(self, array: np.ndarray) -> tf.Tensor:
        return tf.constant(np.asarray(array, dtype=np.int64))

    def to_numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return np.array(tensor.numpy(), dtype=np.int64, copy=True)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable))

    def add(self, a, b):
        return tf.add(a, b)

    def sub(self, a, b):
        return tf.subtract(a, b)

    def neg(self, a):
        return tf.negative(a)

    def mul(self, a, b):
        return tf.multiply(a, b)

    def matmul(self, a, b):
        return tf.linalg.matmul(a, b)

    def sum(self, a, axis=None, keepdims=False):
        axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        return tf.reduce_sum(a, axis=axis, keepdims=keepdims)

    def _bits(self, bits):
        return tf.constant(bits, dtype=tf.int64)

    def shift_left(self, a, bits):
        return tf.bitwise.left_shift(a, self._bits(bits))

    def shift_right_arithmetic(self, a, bits):
        return tf.bitwise.right_shift(a, self._bits(bits))

    def shift_right_logical(self, a, bits):
        if bits == 0:
            return tf.identity(a)
        if bits >= 64:
            return tf.zeros_like(a)
        mask = tf.constant((1 << (64 - bits)) - 1, dtype=tf.int64)
        return tf.bitwise.bitwise_and(tf.bitwise.right_shift(a, self._bits(bits)), mask)

    def bitwise_and(self, a, b):
        return tf.bitwise.bitwise_and(a, b)

    def bitwise_or(self, a, b):
        return tf.bitwise.bitwise_or(a, b)

    def bitwise_xor(self, a, b):
        return tf.bitwise.bitwise_xor(a, b)

    def reshape(self, a, shape: Sequence[int]):
        return tf.reshape(a, tuple(shape))

    def transpose(self, a, perm=None):
        return tf.transpose(a, perm)

    def concat(self, tensors, axis=0):
        return tf.concat(list(tensors), axis=axis)

    def stack(self, tensors, axis=0):
        return tf.stack(list(tensors), axis=axis)

    def pad(self, a, widths):
        return tf.pad(a, [list(w) for w in widths])

    def broadcast_to(self, a, shape):
        return tf.broadcast_to(a, tuple(shape))
