"""Reference ring kernels on numpy.

numpy's int64 arithmetic wraps around mod 2^64, but its int64 matmul has no
BLAS behind it; large products go through exact float64 GEMMs on limbs
(OpenBLAS, see `limbs.py`), several times faster with the same bits. The limb
route works in place in per-thread scratch buffers: fresh multi-megabyte
temporaries cost more in page faults than the GEMMs themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from privkeras.core.kernels.base import RingKernels, as_ring_numpy, matmul_shape, matmul_volume
from privkeras.core.kernels.limbs import LIMB_BITS, PRODUCT_TERMS

__all__ = ["NUMPY_LIMBS_MIN_VOLUME", "NumpyKernels"]

#: From this many multiply-adds on, "auto" matmul uses limbs: numpy's int64
#: loop wins at 48^3 and loses at 64^3 on the benchmark machine (2 cores).
NUMPY_LIMBS_MIN_VOLUME = 64**3

#: Scratch buffers larger than this are allocated per call instead of kept.
SCRATCH_MAX_BYTES = 16 * 2**20


class _Scratch(threading.local):
    """Per-thread reusable buffers, one per role, re-made when the shape changes."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        buffer = self.buffers.get(role)
        if buffer is not None and buffer.shape == shape and buffer.dtype == dtype:
            return buffer
        buffer = np.empty(shape, dtype=dtype)
        if buffer.nbytes <= SCRATCH_MAX_BYTES:
            self.buffers[role] = buffer
        return buffer


_SCRATCH = _Scratch()


def _split_limbs_in_place(a: np.ndarray, role: str) -> list[np.ndarray]:
    """`limbs.split_limbs` for numpy, in scratch buffers (valid until the next call)."""
    rest = _SCRATCH.get(role + "/rest", a.shape, np.int64)
    low = _SCRATCH.get(role + "/low", a.shape, np.int64)
    np.add(a, 1 << (LIMB_BITS[0] - 1), out=rest)
    limbs = []
    for index, width in enumerate(LIMB_BITS):
        np.bitwise_and(rest, (1 << width) - 1, out=low)
        limb = _SCRATCH.get(f"{role}/limb{index}", a.shape, np.float64)
        np.copyto(limb, low, casting="unsafe")
        limb -= 1 << (width - 1)
        limbs.append(limb)
        if index + 1 < len(LIMB_BITS):
            np.right_shift(rest, width, out=rest)
            rest += 1 << (LIMB_BITS[index + 1] - 1)
    return limbs


class NumpyKernels(RingKernels):
    """int64 numpy arithmetic, which wraps around mod 2^64 for arrays.

    Args:
        matmul_method: "auto", "native" (numpy's int64 loop) or "limbs".
    """

    name = "numpy"

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return as_ring_numpy(array)

    def to_numpy(self, tensor: np.ndarray) -> np.ndarray:
        return as_ring_numpy(tensor)

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

    def _auto_matmul_method(self, a, b) -> str:
        volume = matmul_volume(np.shape(a), np.shape(b))
        return "limbs" if volume >= NUMPY_LIMBS_MIN_VOLUME else "native"

    def _matmul_native(self, a, b):
        return np.matmul(a, b, dtype=np.int64)

    def _limb_matmul_exact(self, a, b):
        a, b = np.asarray(a), np.asarray(b)
        shape = matmul_shape(a.shape, b.shape)
        a_limbs = _split_limbs_in_place(a, "a")
        b_limbs = _split_limbs_in_place(b, "b")
        exact = _SCRATCH.get("exact", shape, np.float64)
        product = _SCRATCH.get("product", shape, np.float64)
        term = _SCRATCH.get("term", shape, np.int64)
        out = np.zeros(shape, dtype=np.int64)
        for shift, pairs in PRODUCT_TERMS:
            (i, j), *others = pairs
            np.matmul(a_limbs[i], b_limbs[j], out=exact)
            for i, j in others:
                exact += np.matmul(a_limbs[i], b_limbs[j], out=product)
            np.copyto(term, exact, casting="unsafe")
            term <<= shift
            out += term
        return out

    def _to_float64(self, a):
        return np.asarray(a, dtype=np.float64)

    def _float_matmul(self, a, b):
        return np.matmul(a, b)

    def _float_to_ring(self, a):
        return a.astype(np.int64)

    def sum(self, a, axis=None, keepdims=False):
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        return np.sum(a, axis=axis, keepdims=keepdims, dtype=np.int64)

    def _shift_left(self, a, bits):
        return np.left_shift(a, np.int64(bits))

    def _shift_right_arithmetic(self, a, bits):
        return np.right_shift(a, np.int64(bits))

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
