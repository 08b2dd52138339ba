"""Ring kernels on TensorFlow int64 tensors (the TF-Encrypted style engine's arithmetic).

Everything runs on TensorFlow's own ops. TensorFlow's int64 matmul is a
plain Eigen loop and there is none on GPU, so "auto" times it against float64
GEMMs on limbs (`limbs.py`) per shape class on the machine at hand
(`routes.py`); GPU tensors take limbs. Inside graphs (`tf.function`),
where nothing can be timed, a route already measured for the shape class
is reused, else TensorFlow's int64 matmul. `matmul_method="torch"` still
hands eager CPU matmuls and convolutions to torch over DLPack (no copy), for
comparison; "auto" never takes it. Every route gives the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from privkeras.core.kernels.base import RingKernels, as_ring_numpy

__all__ = ["TensorFlowKernels"]


class TensorFlowKernels(RingKernels):
    """tf.int64 arithmetic; TensorFlow's int64 kernels wrap around mod 2^64.

    Args:
        matmul_method: "auto", "native" (TensorFlow's int64 matmul), "limbs"
            (float64 GEMMs in TensorFlow, the GPU route) or "torch" (torch's
            int64 matmul and convolution on the same CPU memory; eager CPU
            tensors only).
    """

    name = "tensorflow"

    def from_numpy(self, array: np.ndarray) -> tf.Tensor:
        return tf.constant(as_ring_numpy(array))

    def to_numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return as_ring_numpy(tensor.numpy())

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable))

    def constant(self, value: int, shape: Sequence[int] = ()) -> tf.Tensor:
        wrapped = int(np.array(int(value) % 2**64, dtype=np.uint64).view(np.int64))
        return tf.fill(tuple(shape), tf.constant(wrapped, dtype=tf.int64))

    def add(self, a, b):
        return tf.add(a, b)

    def sub(self, a, b):
        return tf.subtract(a, b)

    def neg(self, a):
        return tf.negative(a)

    def mul(self, a, b):
        return tf.multiply(a, b)

    def _matmul_routes(self) -> dict[str, Any]:
        torch_route = {"torch": lambda a, b, b_owner=None: self._matmul_torch(a, b)}
        return {**super()._matmul_routes(), **torch_route}

    def matmul_candidates(self, a, b) -> list[str]:
        if _on_gpu(a) or _on_gpu(b):
            return ["limbs"]
        return ["native", "limbs"]

    def _static_matmul_route(self, a, b) -> str:
        return "limbs" if _on_gpu(a) or _on_gpu(b) else "native"

    def _context_key(self, *tensors) -> tuple:
        return ("gpu" if any(_on_gpu(t) for t in tensors) else "cpu",)

    def _library_version(self) -> str:
        return tf.__version__

    def _can_time(self, *tensors) -> bool:
        return all(_is_eager(t) for t in tensors)

    def _operand_version(self, tensor) -> int | None:
        # Eager tensors are immutable; variables and graph tensors are never kept.
        if isinstance(tensor, tf.Variable) or not _is_eager(tensor):
            return None
        return 0

    def _matmul_native(self, a, b):
        return tf.linalg.matmul(a, b)

    def _matmul_torch(self, a, b):
        torch_kernels = _delegate_kernels(a, b)
        return _from_torch(torch_kernels.matmul(_as_torch(a), _as_torch(b)))

    def conv2d(self, x, kernel, strides=(1, 1), padding="VALID"):
        """`RingKernels.conv2d`; on the "torch" route the whole convolution runs in torch."""
        if self.matmul_method == "torch":
            torch_kernels = _delegate_kernels(x, kernel)
            out = torch_kernels.conv2d(_as_torch(x), _as_torch(kernel), strides, padding)
            return _from_torch(out)
        return super().conv2d(x, kernel, strides, padding)

    def to_float64(self, a):
        return tf.cast(a, tf.float64)

    def float_matmul(self, a, b):
        return tf.linalg.matmul(a, b)

    def float_to_ring(self, a):
        return tf.cast(a, tf.int64)

    def sum(self, a, axis=None, keepdims=False):
        axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        return tf.reduce_sum(a, axis=axis, keepdims=keepdims)

    def _shift_left(self, a, bits):
        return tf.bitwise.left_shift(a, tf.constant(bits, dtype=tf.int64))

    def _shift_right_arithmetic(self, a, bits):
        return tf.bitwise.right_shift(a, tf.constant(bits, dtype=tf.int64))

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


def _is_eager(tensor: Any) -> bool:
    return hasattr(tensor, "numpy") and tf.executing_eagerly()


def _on_gpu(tensor: Any) -> bool:
    return "GPU" in (getattr(tensor, "device", "") or "").upper()


def _can_delegate(*tensors: Any) -> bool:
    """Whether torch can work on these tensors' memory: eager, on CPU, non-empty."""
    return (
        all(_is_eager(t) and not _on_gpu(t) and t.shape.num_elements() for t in tensors)
        and _torch_cpu_kernels() is not None
    )


def _delegate_kernels(*tensors: Any) -> RingKernels:
    if not _can_delegate(*tensors):
        raise ValueError(
            'Expected non-empty eager CPU tensors and an importable torch for matmul_method="torch". '
            'Received: graph, GPU or empty tensors, or no torch; use "native" or "limbs"'
        )
    return _torch_cpu_kernels()


def _torch_cpu_kernels() -> RingKernels | None:
    """The torch CPU kernels, made on first use; None where torch is not installed."""
    global _TORCH_KERNELS
    if _TORCH_KERNELS is _UNSET:
        try:
            from privkeras.core.kernels.torch import TorchKernels
        except ImportError:
            _TORCH_KERNELS = None
        else:
            _TORCH_KERNELS = TorchKernels("cpu", matmul_method="native")
    return _TORCH_KERNELS


def _as_torch(tensor: Any) -> Any:
    """A torch view of an eager CPU tensor's memory (no copy)."""
    import torch

    return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(tf.convert_to_tensor(tensor)))


def _from_torch(tensor: Any) -> tf.Tensor:
    import torch

    return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(tensor.contiguous()))


_UNSET: Any = object()
_TORCH_KERNELS: Any = _UNSET
