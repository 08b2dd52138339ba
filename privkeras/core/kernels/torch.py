"""Ring kernels on torch int64 tensors (CPU; CUDA tensors stay on their device)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from privkeras.core.kernels.base import RingKernels

__all__ = ["TorchKernels"]


class TorchKernels(RingKernels):
    """torch int64 arithmetic; torch wraps signed int64 around mod 2^64.

    Args:
        device: Where new tensors are made (`"cpu"` by default).
    """

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(array, dtype=np.int64)
        return torch.from_numpy(array.copy()).to(self.device)

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(np.int64, copy=True)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def add(self, a, b):
        return torch.add(a, b)

    def sub(self, a, b):
        return torch.sub(a, b)

    def neg(self, a):
        return torch.neg(a)

    def mul(self, a, b):
        return torch.mul(a, b)

    def matmul(self, a, b):
        return torch.matmul(a, b)

    def sum(self, a, axis=None, keepdims=False):
        if axis is None:
            total = torch.sum(a, dtype=torch.int64)
            return total.reshape([1] * a.dim()) if keepdims else total
        dims = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        return torch.sum(a, dim=dims, keepdim=keepdims, dtype=torch.int64)

    def shift_left(self, a, bits):
        return torch.bitwise_left_shift(a, bits)

    def shift_right_arithmetic(self, a, bits):
        return torch.bitwise_right_shift(a, bits)

    def shift_right_logical(self, a, bits):
        if bits == 0:
            return a.clone()
        if bits >= 64:
            return torch.zeros_like(a)
        mask = (1 << (64 - bits)) - 1
        return torch.bitwise_and(torch.bitwise_right_shift(a, bits), mask)

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
