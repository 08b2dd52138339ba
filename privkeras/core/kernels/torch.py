"""Ring kernels on torch int64 tensors, on CPU or CUDA.

On CPU, torch's own int64 matmul is as fast as float64 GEMM where the CPU
has a 64-bit vector multiply (AVX-512DQ) and 25-40x slower where it has not
(AVX2 only), so "auto" times the routes per shape class on the machine at
hand (`routes.py`). CUDA has no int64 matmul at all: CUDA tensors are
multiplied by float64 GEMMs on limbs (`limbs.py`); `matmul_method="limbs"`
runs that same route on CPU for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from privkeras.core.kernels.base import RingKernels, as_ring_numpy
from privkeras.core.kernels.limbs import LimbOperand, check_exact_depth, depth_chunks

__all__ = ["TorchKernels"]


def split_for_limbs(a: torch.Tensor, side: str, chunk: int) -> LimbOperand:
    """`limbs.prepare_limb_operand` with in-place torch ops (nine integer passes)."""
    check_exact_depth(chunk)
    a0 = torch.bitwise_left_shift(a, 42)
    a0.bitwise_right_shift_(42)
    rest = torch.sub(a, a0)
    rest.bitwise_right_shift_(22)
    a1 = torch.bitwise_left_shift(rest, 43)
    a1.bitwise_right_shift_(43)
    rest.sub_(a1)
    rest.bitwise_left_shift_(22)
    rest.bitwise_right_shift_(43)  # a2
    depth_axis = a.dim() - 1 if side == "left" else a.dim() - 2
    batched, paired = [], []
    for cut in depth_chunks(a.shape[depth_axis], chunk):
        index = (Ellipsis, cut) if side == "left" else (Ellipsis, cut, slice(None))
        c0, c1, c2 = a0[index], a1[index], rest[index]
        stack = torch.empty((3, *c0.shape), dtype=torch.float64, device=a.device)
        stack[0].copy_(c0)
        stack[1].copy_(c1)
        torch.add(stack[0], stack[1], out=stack[2])
        pair_shape = list(c0.shape)
        pair_shape[depth_axis] *= 2
        pair = torch.empty(pair_shape, dtype=torch.float64, device=a.device)
        width = c0.shape[depth_axis]
        first, second = pair.narrow(depth_axis, 0, width), pair.narrow(depth_axis, width, width)
        (first.copy_(stack[0]), second.copy_(c2)) if side == "left" else (
            first.copy_(c2),
            second.copy_(stack[0]),
        )
        batched.append(stack)
        paired.append(pair)
    return LimbOperand(side, tuple(a.shape), chunk, tuple(batched), tuple(paired))


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

    def matmul_candidates(self, a, b) -> list[str]:
        if a.device.type != "cpu" or b.device.type != "cpu":
            return ["limbs"]  # torch has no int64 matmul on CUDA
        return ["native", "limbs"]

    def _static_matmul_route(self, a, b) -> str:
        return "native" if a.device.type == "cpu" else "limbs"

    def _context_key(self, *tensors) -> tuple:
        return (tensors[0].device.type, torch.get_num_threads())

    def _library_version(self) -> str:
        return torch.__version__

    def _split_for_limbs(self, tensor, side, chunk):
        return split_for_limbs(tensor, side, chunk)

    def _synchronize(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _operand_version(self, tensor) -> int | None:
        if not isinstance(tensor, torch.Tensor) or tensor.requires_grad:
            return None
        return tensor._version  # bumped by every in-place write, through any view

    def _matmul_native(self, a, b):
        return torch.matmul(a, b)

    def to_float64(self, a):
        return a.to(torch.float64)

    def float_matmul(self, a, b):
        return torch.matmul(a, b)

    def float_to_ring(self, a):
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
