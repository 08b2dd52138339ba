"""Reference ring kernels on numpy.

numpy's int64 arithmetic wraps around mod 2^64, but its int64 matmul has no
BLAS behind it; large products go through exact float64 GEMMs on limbs
(OpenBLAS, see `limbs.py`), several times faster with the same bits. Which
one "auto" takes is timed per shape class on the machine at hand
(`routes.py`); with measurement off, the volume and intensity rule below
decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privkeras.core.kernels.base import RingKernels, as_ring_numpy, matmul_volume
from privkeras.core.kernels.limbs import LimbOperand, check_exact_depth, depth_chunks
from privkeras.core.kernels.scratch import Scratch

__all__ = ["NUMPY_LIMBS_MIN_INTENSITY", "NUMPY_LIMBS_MIN_VOLUME", "NumpyKernels"]

#: With PRIVKERAS_ROUTE_CACHE=off, "auto" uses limbs from this many multiply-adds on
#: (numpy's int64 loop won at 48^3 and lost at 96^3 on the machine that set it) ...
NUMPY_LIMBS_MIN_VOLUME = 64**3
#: ... and where each operand element takes part in this many multiply-adds
#: (m k n / (m k + k n + m n)): splitting into limbs costs per element.
NUMPY_LIMBS_MIN_INTENSITY = 14.0


def _read_only(array: np.ndarray) -> bool:
    """Whether nothing can write `array`'s memory through numpy (it and every base read-only)."""
    while isinstance(array, np.ndarray):
        if array.flags.writeable:
            return False
        array = array.base
    return array is None or isinstance(array, bytes)


_SCRATCH = Scratch()


def _buffer(role: str, shape, dtype, transient: bool) -> np.ndarray:
    """A scratch array of this thread (transient values) or a fresh one (kept or returned)."""
    shape = tuple(shape)
    if not transient:
        return np.empty(shape, dtype=dtype)
    return _SCRATCH.get(
        role,
        lambda b: b.shape == shape and b.dtype == dtype,
        lambda: np.empty(shape, dtype=dtype),
    )


def split_for_limbs(a: np.ndarray, side: str, chunk: int, transient: bool = False) -> LimbOperand:
    """`limbs.prepare_limb_operand` in place: nine integer passes, five float64 writes."""
    check_exact_depth(chunk)
    a = np.asarray(a)
    role = f"limbs/{side}/"
    a0 = _buffer(role + "a0", a.shape, np.int64, True)
    a1 = _buffer(role + "a1", a.shape, np.int64, True)
    rest = _buffer(role + "a2", a.shape, np.int64, True)
    np.left_shift(a, 42, out=a0)
    a0 >>= 42
    np.subtract(a, a0, out=rest)
    rest >>= 22
    np.left_shift(rest, 43, out=a1)
    a1 >>= 43
    rest -= a1
    rest <<= 22
    rest >>= 43  # a2
    depth_axis = a.ndim - 1 if side == "left" else a.ndim - 2
    batched, paired = [], []
    for number, cut in enumerate(depth_chunks(a.shape[depth_axis], chunk)):
        index = (Ellipsis, cut) if side == "left" else (Ellipsis, cut, slice(None))
        c0, c1, c2 = a0[index], a1[index], rest[index]
        stack = _buffer(f"{role}stack{number}", (3, *c0.shape), np.float64, transient)
        np.copyto(stack[0], c0, casting="unsafe")
        np.copyto(stack[1], c1, casting="unsafe")
        np.add(stack[0], stack[1], out=stack[2])
        pair_shape = list(c0.shape)
        pair_shape[depth_axis] *= 2
        pair = _buffer(f"{role}pair{number}", pair_shape, np.float64, transient)
        width = c0.shape[depth_axis]
        first = (
            (Ellipsis, slice(0, width))
            if side == "left"
            else (Ellipsis, slice(0, width), slice(None))
        )
        second = (
            (Ellipsis, slice(width, None))
            if side == "left"
            else (Ellipsis, slice(width, None), slice(None))
        )
        np.copyto(pair[first], stack[0] if side == "left" else c2, casting="unsafe")
        np.copyto(pair[second], c2 if side == "left" else stack[0], casting="unsafe")
        batched.append(stack)
        paired.append(pair)
    return LimbOperand(side, a.shape, chunk, tuple(batched), tuple(paired))


def limb_product(left: LimbOperand, right: LimbOperand) -> np.ndarray:
    """`limbs.limb_matmul` of split operands with GEMM outputs in scratch buffers."""
    total = None
    for lb, lp, rb, rp in zip(left.batched, left.paired, right.batched, right.paired):
        lr, rr = lb.ndim, rb.ndim
        if lr < rr:
            lb = lb.reshape(lb.shape[0], *([1] * (rr - lr)), *lb.shape[1:])
        elif rr < lr:
            rb = rb.reshape(rb.shape[0], *([1] * (lr - rr)), *rb.shape[1:])
        batch = np.broadcast_shapes(lb.shape[:-2], rb.shape[:-2])
        shape = (*batch, lb.shape[-2], rb.shape[-1])
        floats = np.matmul(lb, rb, out=_buffer("limbs/products", shape, np.float64, True))
        pair_floats = np.matmul(lp, rp, out=_buffer("limbs/t43", shape[1:], np.float64, True))
        ints = _buffer("limbs/ints", shape, np.int64, True)
        np.copyto(ints, floats, casting="unsafe")
        t43 = _buffer("limbs/t43ints", shape[1:], np.int64, True)
        np.copyto(t43, pair_floats, casting="unsafe")
        t0, t11, t22 = ints[0], ints[1], ints[2]
        t22 -= t0  # Karatsuba: K - A0B0 - A1B1
        t22 -= t11
        t43 += t11
        t43 += t11
        t43 <<= 43
        out = np.left_shift(t22, 22)
        out += t0
        out += t43
        total = out if total is None else np.add(total, out, out=total)
    return total


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

    def _static_matmul_route(self, a, b) -> str:
        a_shape, b_shape = np.shape(a), np.shape(b)
        (m, k), n = a_shape[-2:], b_shape[-1]
        intensity = m * k * n / max(m * k + k * n + m * n, 1)
        big = matmul_volume(a_shape, b_shape) >= NUMPY_LIMBS_MIN_VOLUME
        return "limbs" if big and intensity >= NUMPY_LIMBS_MIN_INTENSITY else "native"

    def _library_version(self) -> str:
        return np.__version__

    def _split_for_limbs(self, tensor, side, chunk, transient=False):
        return split_for_limbs(tensor, side, chunk, transient)

    def _limb_product(self, left, right, chunk):
        return limb_product(left, right)

    def _operand_version(self, tensor) -> int | None:
        return 0 if isinstance(tensor, np.ndarray) and _read_only(tensor) else None

    def _matmul_native(self, a, b):
        return np.matmul(a, b, dtype=np.int64)

    def to_float64(self, a):
        return np.asarray(a, dtype=np.float64)

    def float_matmul(self, a, b):
        return np.matmul(a, b)

    def float_to_ring(self, a):
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
