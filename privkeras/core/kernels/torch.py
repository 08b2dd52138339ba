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

from privkeras.core.kernels.base import RingKernels, as_ring_numpy, matmul_shape
from privkeras.core.kernels.bytes import byte_matmul, prepare_byte_operand
from privkeras.core.kernels.limbs import LimbOperand, check_exact_depth, depth_chunks
from privkeras.core.kernels.scratch import Scratch

__all__ = ["TorchKernels"]


_SCRATCH = Scratch()


def _buffer(role: str, shape, dtype, device, transient: bool) -> torch.Tensor:
    """A scratch tensor of this thread (transient values) or a fresh one (kept or returned)."""
    shape = tuple(shape)
    if not transient:
        return torch.empty(shape, dtype=dtype, device=device)
    return _SCRATCH.get(
        role,
        lambda t: tuple(t.shape) == shape and t.dtype == dtype and t.device == device,
        lambda: torch.empty(shape, dtype=dtype, device=device),
    )


def split_for_limbs(a: torch.Tensor, side: str, chunk: int, transient: bool = False) -> LimbOperand:
    """`limbs.prepare_limb_operand` with in-place torch ops (nine integer passes).

    `transient` splits (dropped after the call) are written into this
    thread's scratch buffers, which a fresh split of the same role reuses.
    """
    check_exact_depth(chunk)
    role = f"limbs/{side}/"
    a0 = _buffer(role + "a0", a.shape, torch.int64, a.device, True)
    a1 = _buffer(role + "a1", a.shape, torch.int64, a.device, True)
    rest = _buffer(role + "a2", a.shape, torch.int64, a.device, True)
    torch.bitwise_left_shift(a, 42, out=a0)
    a0.bitwise_right_shift_(42)
    torch.sub(a, a0, out=rest)
    rest.bitwise_right_shift_(22)
    torch.bitwise_left_shift(rest, 43, out=a1)
    a1.bitwise_right_shift_(43)
    rest.sub_(a1)
    rest.bitwise_left_shift_(22)
    rest.bitwise_right_shift_(43)  # a2
    depth_axis = a.dim() - 1 if side == "left" else a.dim() - 2
    batched, paired = [], []
    for number, cut in enumerate(depth_chunks(a.shape[depth_axis], chunk)):
        index = (Ellipsis, cut) if side == "left" else (Ellipsis, cut, slice(None))
        c0, c1, c2 = a0[index], a1[index], rest[index]
        stack = _buffer(f"{role}stack{number}", (3, *c0.shape), torch.float64, a.device, transient)
        stack[0].copy_(c0)
        stack[1].copy_(c1)
        torch.add(stack[0], stack[1], out=stack[2])
        pair_shape = list(c0.shape)
        pair_shape[depth_axis] *= 2
        pair = _buffer(f"{role}pair{number}", pair_shape, torch.float64, a.device, transient)
        width = c0.shape[depth_axis]
        first, second = pair.narrow(depth_axis, 0, width), pair.narrow(depth_axis, width, width)
        first.copy_(stack[0] if side == "left" else c2)
        second.copy_(c2 if side == "left" else stack[0])
        batched.append(stack)
        paired.append(pair)
    return LimbOperand(side, tuple(a.shape), chunk, tuple(batched), tuple(paired))


def limb_product(left: LimbOperand, right: LimbOperand) -> torch.Tensor:
    """`limbs.limb_matmul` of split operands with GEMM outputs in scratch buffers."""
    total = None
    for lb, lp, rb, rp in zip(left.batched, left.paired, right.batched, right.paired):
        lr, rr = lb.dim(), rb.dim()
        if lr < rr:
            lb = lb.reshape(lb.shape[0], *([1] * (rr - lr)), *lb.shape[1:])
        elif rr < lr:
            rb = rb.reshape(rb.shape[0], *([1] * (lr - rr)), *rb.shape[1:])
        batch = np.broadcast_shapes(
            tuple(lb.shape[:-2]), tuple(rb.shape[:-2])
        )  # torch's imports torch._refs
        m, n = lb.shape[-2], rb.shape[-1]
        device = lb.device
        floats = _buffer("limbs/products", (*batch, m, n), torch.float64, device, True)
        torch.matmul(lb, rb, out=floats)
        pair_floats = _buffer("limbs/t43", floats.shape[1:], torch.float64, device, True)
        torch.matmul(lp, rp, out=pair_floats)
        ints = _buffer("limbs/ints", floats.shape, torch.int64, device, True)
        ints.copy_(floats)
        t43 = _buffer("limbs/t43ints", pair_floats.shape, torch.int64, device, True)
        t43.copy_(pair_floats)
        t0, t11, t22 = ints[0], ints[1], ints[2]
        t22.sub_(t0).sub_(t11)  # Karatsuba: K - A0B0 - A1B1
        t43.add_(t11).add_(t11).bitwise_left_shift_(43)
        out = torch.bitwise_left_shift(t22, 22)
        out.add_(t0).add_(t43)
        total = out if total is None else total.add_(out)
    return total


class TorchKernels(RingKernels):
    """torch int64 arithmetic; torch wraps signed int64 around mod 2^64.

    Args:
        device: Where `from_numpy` puts new tensors (`"cpu"` by default).
            Operations keep their operands' device.
        matmul_method: "auto" (the fastest of the routes below, timed per
            shape class on this machine), "native" (int64 matmul, CPU only),
            "limbs" (float64 GEMMs, `limbs.py`) or "bytes" (int8 GEMMs,
            `bytes.py`, the tensor-core route; right operands of two axes).
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
        extra = ["bytes"] if b.dim() == 2 and hasattr(torch, "_int_mm") else []
        if a.device.type != "cpu" or b.device.type != "cpu":
            return ["limbs", *extra]  # torch has no int64 matmul on CUDA
        return ["native", "limbs", *extra]

    def _matmul_routes(self) -> dict[str, Any]:
        byte_route = {"bytes": lambda a, b, b_owner=None: self.matmul_bytes(a, b, b_owner)}
        return {**super()._matmul_routes(), **byte_route}

    def matmul_bytes(self, a, b, b_owner=None):
        """`a @ b` mod 2^64 from int8 GEMMs on bytes (see `bytes.py`): the tensor-core route.

        Runs on CPU too (`torch._int_mm`), so that tests check its arithmetic
        where no GPU is. Splits of reused operands are kept, as for limbs.
        """
        out_shape = matmul_shape(a.shape, b.shape)
        if 0 in out_shape or a.shape[-1] == 0:
            return torch.zeros(out_shape, dtype=torch.int64, device=a.device)
        if b.dim() > 2:  # broadcast batches of right operands: one product per batch entry
            a, b = (
                torch.broadcast_to(a, (*out_shape[:-2], *a.shape[-2:])),
                torch.broadcast_to(b, (*out_shape[:-2], *b.shape[-2:])),
            )
            parts = [
                self.matmul_bytes(x, y)
                for x, y in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
            ]
            return torch.stack(parts).reshape(out_shape)
        flat = a.reshape(-1, a.shape[-1])
        left = self._kept(
            a,
            ("bytes", "left", tuple(a.shape)),
            lambda transient: prepare_byte_operand(flat, "left"),
        )
        owner = b if b_owner is None else b_owner
        right = self._kept(
            owner,
            ("bytes", "right", tuple(b.shape)),
            lambda transient: prepare_byte_operand(b, "right"),
        )
        return byte_matmul(left, right).reshape(out_shape)

    def _static_matmul_route(self, a, b) -> str:
        return "native" if a.device.type == "cpu" else "limbs"

    def _context_key(self, *tensors) -> tuple:
        return (tensors[0].device.type, torch.get_num_threads())

    def _library_version(self) -> str:
        return torch.__version__

    def _split_for_limbs(self, tensor, side, chunk, transient=False):
        return split_for_limbs(tensor, side, chunk, transient)

    def _limb_product(self, left, right, chunk):
        return limb_product(left, right)

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
