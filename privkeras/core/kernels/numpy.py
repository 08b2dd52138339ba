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

__all__ = ["NUMPY_LIMBS_MIN_INTENSITY", "NUMPY_LIMBS_MIN_VOLUME", "NumpyKernels"]

#: "auto" matmul uses limbs from this many multiply-adds on (numpy's int64
#: loop wins at 48^3 and loses at 96^3 on the benchmark machine) ...
NUMPY_LIMBS_MIN_VOLUME = 64**3
#: ... and where each operand element takes part in this many multiply-adds
#: (m k n / (m k + k n + m n)): splitting into limbs costs per element, so
#: thin products such as im2col with few channels stay with the int64 loop.
NUMPY_LIMBS_MIN_INTENSITY = 14.0

#: Most bytes of scratch buffers one thread keeps between calls; beyond it,
#: buffers are allocated per call (their page faults matter less next to big GEMMs).
SCRATCH_BUDGET_BYTES = 64 * 2**20


class _Scratch(threading.local):
    """Per-thread reusable buffers, one per role, re-made when the shape changes."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        buffer = self.buffers.pop(role, None)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = np.empty(shape, dtype=dtype)
        kept = sum(b.nbytes for b in self.buffers.values())
        if kept + buffer.nbytes <= SCRATCH_BUDGET_BYTES:
            self.buffers[role] = buffer
        return buffer


_SCRATCH = _Scratch()


def _split_limbs_into(a: np.ndarray, limbs: Sequence[np.ndarray], role: str) -> None:
    """`limbs.split_limbs` for numpy, writing limb i into the float64 view `limbs[i]`."""
    rest = _SCRATCH.get(role + "/rest", a.shape, np.int64)
    low = _SCRATCH.get(role + "/low", a.shape, np.int64)
    np.add(a, 1 << (LIMB_BITS[0] - 1), out=rest)
    for index, (width, limb) in enumerate(zip(LIMB_BITS, limbs)):
        np.bitwise_and(rest, (1 << width) - 1, out=low)
        np.copyto(limb, low, casting="unsafe")
        limb -= 1 << (width - 1)
        if index + 1 < len(LIMB_BITS):
            np.right_shift(rest, width, out=rest)
            rest += 1 << (LIMB_BITS[index + 1] - 1)


def _limb_products(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The six limb products of `PRODUCT_TERMS` from three BLAS calls.

    Limbs are laid out so that one GEMM yields several products:
    [A0; A1; A2] @ B0, A0 @ [B1 B2] and A1 @ B1. Fewer, larger calls cost less
    Python and fewer BLAS thread wake-ups than six. Results are scratch views.
    """
    *a_batch, m, k = a.shape
    *b_batch, _, n = b.shape
    batch = np.broadcast_shapes(tuple(a_batch), tuple(b_batch))
    a_stack = _SCRATCH.get("a/limbs", (*a_batch, 3 * m, k), np.float64)
    b_low = _SCRATCH.get("b/limb0", b.shape, np.float64)
    b_high = _SCRATCH.get("b/limbs12", (*b_batch, k, 2 * n), np.float64)
    a_limbs = [a_stack[..., i * m : (i + 1) * m, :] for i in range(len(LIMB_BITS))]
    _split_limbs_into(a, a_limbs, "a")
    _split_limbs_into(b, (b_low, b_high[..., :n], b_high[..., n:]), "b")
    by_b0 = np.matmul(a_stack, b_low, out=_SCRATCH.get("by_b0", (*batch, 3 * m, n), np.float64))
    by_a0 = np.matmul(a_limbs[0], b_high, out=_SCRATCH.get("by_a0", (*batch, m, 2 * n), np.float64))
    a1_b1 = np.matmul(
        a_limbs[1], b_high[..., :n], out=_SCRATCH.get("a1_b1", (*batch, m, n), np.float64)
    )
    products = {(i, 0): by_b0[..., i * m : (i + 1) * m, :] for i in range(len(LIMB_BITS))}
    products.update({(0, j): by_a0[..., (j - 1) * n : j * n] for j in (1, 2)})
    products[(1, 1)] = a1_b1
    return products


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
        a_shape, b_shape = np.shape(a), np.shape(b)
        (m, k), n = a_shape[-2:], b_shape[-1]
        intensity = m * k * n / max(m * k + k * n + m * n, 1)
        big = matmul_volume(a_shape, b_shape) >= NUMPY_LIMBS_MIN_VOLUME
        return "limbs" if big and intensity >= NUMPY_LIMBS_MIN_INTENSITY else "native"

    def _matmul_native(self, a, b):
        return np.matmul(a, b, dtype=np.int64)

    def _limb_matmul_exact(self, a, b):
        a, b = np.asarray(a), np.asarray(b)
        shape = matmul_shape(a.shape, b.shape)
        products = _limb_products(a, b)
        exact = _SCRATCH.get("exact", shape, np.float64)
        term = _SCRATCH.get("term", shape, np.int64)
        out = np.zeros(shape, dtype=np.int64)
        for shift, pairs in PRODUCT_TERMS:
            (i, j), *others = pairs
            np.copyto(exact, products[(i, j)])
            for i, j in others:
                exact += products[(i, j)]
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
