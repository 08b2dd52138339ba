"""Ring kernels on torch int64 tensors, on CPU or CUDA.

On CPU torch's own int64 matmul is the fastest exact route. CUDA has no int64
matmul at all, so CUDA tensors are multiplied by float64 GEMMs on limbs
(`limbs.py`); `matmul_method="limbs"` runs that same route on CPU for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from privkeras.core.kernels.base import RingKernels, as_ring_numpy

__all__ = ["TorchKernels"]


class TorchKernels(RingKernels):
    """torch int64 arithmetic; torch wraps signed int64 around mod 2^64.

    Args:
        device: Where `from_numpy` puts new tensors (`"cpu"` by default).
            Operations keep their operands' device.
        matmul_method: "auto" (native int64 on CPU, limbs on CUDA), "native"
            or "limbs".
    """

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", matmul_method: str = "auto"):
        super().__init__(matmul_method)
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"TorchKernels(device={str(self.device)!r}, matmul_method={self.matmul_method!r})"

    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(as_ring_numpy(array)).to(self.device)

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return as_ring_numpy(tensor.detach().cpu().numpy())

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def constant(self, value: int, shape: Sequence[int] = ()) -> torch.Tensor:
        wrapped = int(np.array(int(value) % 2**64, dtype=np.uint64).view(np.int64))
        return torch.full(tuple(shape), wrapped, dtype=torch.int64, device=self.device)

    def add(self, a, b):
        return torch.add(a, b)

    def sub(self, a, b):
        return torch.sub(a, b)

    def neg(self, a):
        return torch.neg(a)

    def mul(self, a, b):
        return torch.mul(a, b)

    def _auto_matmul_method(self, a, b) -> str:
        return "native" if a.device.type == "cpu" else "limbs"

    def _matmul_native(self, a, b):
        return torch.matmul(a, b)

    def _to_float64(self, a):
        return a.to(torch.float64)

    def _float_matmul(self, a, b):
        return torch.matmul(a, b)

    def _float_to_ring(self, a):
        return a.to(torch.int64)

    def sum(self, a, axis=None, keepdims=False):
        if axis is None:
            total = torch.sum(a, dtype=torch.int64)
            return total.reshape([1] * a.dim()) if keepdims else total
        dims = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        return torch.sum(a, dim=dims, keepdim=keepdims, dtype=torch.int64)

    def _shift_left(self, a, bits):
        return torch.bitwise_left_shift(a, bits)

    def _shift_right_arithmetic(self, a, bits):
        return torch.bitwise_right_shift(a, bits)

    def bitwise_and(self, a, b):
        return torch.bitwise_and(a, b)

    def bitwise_or(self, a, b):
        return torch.bitwise_or(a, b)

    def bitwise_xor(self, a, b):
        return torch.bitwise_xor(a, b)

    def reshape(self, a, shape: Sequence[int]):
        return torch.reshape(a, tuple(shape))

    def transpose(self, a, perm=None):
        perm = tuple(reversed(range(a.dim()))) if perm is None else tuple(perm)
        return a.permute(perm)

    def concat(self, tensors, axis=0):
        return torch.cat(list(tensors), dim=axis)

    def stack(self, tensors, axis=0):
        return torch.stack(list(tensors), dim=axis)

    def pad(self, a, widths):
        flat = [w for pair in reversed(list(widths)) for w in pair]
        return torch.nn.functional.pad(a, flat)

    def broadcast_to(self, a, shape):
        return torch.broadcast_to(a, tuple(shape)).clone()
