"""Reference ring kernels on numpy (exact, no BLAS for int64: slow, for tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privkeras.core.kernels.base import RingKernels

__all__ = ["NumpyKernels"]


class NumpyKernels(RingKernels):
    """int64 numpy arithmetic, which wraps around mod 2^64 for arrays."""

    name = "numpy"

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, dtype=np.int64, copy=True)

    def to_numpy(self, tensor: np.ndarray) -> np.ndarray:
        return np.array(tensor, dtype=np.int64, copy=True)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def add(self, a, b):
        return np.add(a, b, dtype=np.int64)

    def sub(self, a, b):
        return np.subtract(a, b, dtype=np.int64)

    def neg(self, a):
        return np.negative(a, dtype=np.int64)

    def mul(self, a, b):
        return np.multiply(a, b, dtype=np.int64)

    def matmul(self, a, b):
        return np.matmul(a, b, dtype=np.int64)

    def sum(self, a, axis=None, keepdims=False):
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        return np.sum(a, axis=axis, keepdims=keepdims, dtype=np.int64)

    def shift_left(self, a, bits):
        return np.left_shift(a, np.int64(bits))

    def shift_right_arithmetic(self, a, bits):
        return np.right_shift(a, np.int64(bits))

    def shift_right_logical(self, a, bits):
        return np.right_shift(np.asarray(a).view(np.uint64), np.uint64(bits)).view(np.int64)

    def bitwise_and(self, a, b):
        return np.bitwise_and(a, b)

    def bitwise_or(self, a, b):
        return np.bitwise_or(a, b)

    def bitwise_xor(self, a, b):
        return np.bitwise_xor(a, b)

    def reshape(self, a, shape: Sequence[int]):
        return np.reshape(a, tuple(shape))

    def transpose(self, a, perm=None):
        return np.transpose(a, perm)

    def concat(self, tensors, axis=0):
        return np.concatenate(list(tensors), axis=axis)

    def stack(self, tensors, axis=0):
        return np.stack(list(tensors), axis=axis)

    def pad(self, a, widths):
        return np.pad(a, [tuple(w) for w in widths])

    def broadcast_to(self, a, shape):
        return np.broadcast_to(a, tuple(shape)).copy()
