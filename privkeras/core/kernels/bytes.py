"""Exact Z_2^64 matrix products from int8 GEMMs on bytes (torch, CPU or CUDA).

int8 GEMMs with int32 accumulation run 4-8x faster than float32 on CPUs with
VNNI and 30x faster than float64 on tensor-core GPUs. A ring element's eight
bytes, read as signed digits s_i = byte_i - 128, give

    a = sum_i s_i 2^(8i) + C  (mod 2^64),   C = 128 * sum_i 2^(8i) = 0x8080...80,

so that for a dot product of depth k

    a @ b = S + C * rowsum(a) + C * colsum(b) - k C^2   (mod 2^64),
    S = sum_{i + j < 8} 2^(8(i + j)) (A_i @ B_j),

with the row sums of a and column sums of b taken in the ring. One int8 GEMM
yields every weight's sum T_w = sum_{i+j=w} A_i @ B_j at once: the left
operand's byte planes side by side along the depth, [A_0 | ... | A_7]
(m x 8k), times a block-Toeplitz right operand whose block (i, w) is B_(w-i)
(zero for w < i), (8k x 8n); then a @ b = sum_w 2^(8w) T_w + corrections.

Exactness: each byte product is at most 128 * 128 = 2^14 in magnitude and a
T_w adds at most 8 of them per step of depth, so its int32 sum is exact while
8 k 2^14 < 2^31: `BYTES_MAX_DEPTH` (16383), checked before the route runs;
deeper products are cut into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "BYTES_MAX_DEPTH",
    "ByteOperand",
    "byte_matmul",
    "check_byte_depth",
    "int8_gemm",
    "prepare_byte_operand",
]

#: Largest depth of one int8 GEMM: every int32 partial sum below 2^31.
BYTES_MAX_DEPTH = (2**31 - 1) // (8 * 2**14)
#: 0x8080808080808080 as an int64: the offset of the signed-digit reading.
_OFFSET = int.from_bytes(b"\x80" * 8, "little") - 2**64
#: 2^(8w) as int64, the weight of T_w.
_WEIGHTS = [1 << (8 * w) for w in range(8)]


def check_byte_depth(depth: int) -> None:
    """Raises unless an int8 GEMM of depth `depth` accumulates exactly in int32."""
    if 8 * depth * 2**14 >= 2**31:
        raise ValueError(
            f"Expected an int8 GEMM depth of at most {BYTES_MAX_DEPTH} (int32 sums of 8 byte "
            f"products of up to 2^14 per step). Received: depth={depth}"
        )


@dataclass(frozen=True)
class ByteOperand:
    """A 2-D ring operand as int8 byte planes, per depth chunk, plus its ring sums.

    Attributes:
        side: "left" (planes side by side: (m, 8 kc)) or "right" (block-Toeplitz: (8 kc, 8n)).
        shape: The ring operand's shape.
        planes: One int8 tensor per depth chunk.
        sums: Row sums (left, (m, 1)) or column sums (right, (1, n)) mod 2^64.
    """

    side: str
    shape: tuple[int, int]
    planes: tuple[Any, ...]
    sums: Any

    @property
    def nbytes(self) -> int:
        return sum(p.numel() for p in self.planes) + 8 * self.sums.numel()


def _signed_bytes(a: torch.Tensor) -> torch.Tensor:
    """(..., 8) int8 digits byte_i - 128 of each element (little-endian byte order)."""
    return (
        torch.bitwise_xor(a.contiguous().view(torch.uint8), 0x80)
        .view(torch.int8)
        .reshape(*a.shape, 8)
    )


def prepare_byte_operand(a: torch.Tensor, side: str, chunk: int = BYTES_MAX_DEPTH) -> ByteOperand:
    """Splits a 2-D ring tensor into the byte planes `byte_matmul` multiplies."""
    check_byte_depth(chunk)
    rows, cols = a.shape
    digits = _signed_bytes(a)  # (rows, cols, 8)
    depth = cols if side == "left" else rows
    planes = []
    for start in range(0, max(depth, 1), chunk):
        stop = min(start + chunk, depth)
        width = stop - start
        if side == "left":  # (m, kc, 8) -> (m, 8, kc) -> (m, 8 kc): [A_0 | ... | A_7]
            part = digits[:, start:stop].permute(0, 2, 1).reshape(rows, 8 * width)
        else:  # block (i, w) of (8, kc, 8, n) is B_(w - i)
            planes_b = digits[start:stop].permute(2, 0, 1)  # (8, kc, n)
            part = torch.zeros((8, width, 8, cols), dtype=torch.int8, device=a.device)
            for i in range(8):
                part[i, :, i:, :] = planes_b[: 8 - i].permute(1, 0, 2)
            part = part.reshape(8 * width, 8 * cols)
        planes.append(part.contiguous())
    sums = a.sum(dim=1, keepdim=True) if side == "left" else a.sum(dim=0, keepdim=True)
    return ByteOperand(side, (rows, cols), tuple(planes), sums)


def int8_gemm(left: torch.Tensor, right: torch.Tensor, pad: bool | None = None) -> torch.Tensor:
    """int8 @ int8 -> int32 (`torch._int_mm`), zero-padded as CUDA's kernel needs.

    CUDA wants more than 16 rows and depths that are multiples of 8 (the
    columns, 8n, always are); `pad` (default: on CUDA) adds zero rows and
    depth, which change no sum, so that CPU tests run the same arithmetic.
    """
    rows, depth = left.shape
    cols = right.shape[1]
    pad = left.is_cuda if pad is None else pad
    pad_rows = max(0, 17 - rows) if pad else 0
    pad_depth = (-depth) % 8 if pad else 0
    if pad_rows or pad_depth:
        left = torch.nn.functional.pad(left, (0, pad_depth, 0, pad_rows))
        right = torch.nn.functional.pad(right, (0, 0, 0, pad_depth))
    out = torch._int_mm(left, right)
    return out[:rows, :cols] if pad_rows else out


def byte_matmul(left: ByteOperand, right: ByteOperand) -> torch.Tensor:
    """`a @ b` mod 2^64 of two 2-D ring operands from int8 GEMMs, bit-identical to int64 matmul."""
    (m, depth), (_, n) = left.shape, right.shape
    total = None
    for lp, rp in zip(left.planes, right.planes):
        check_byte_depth(lp.shape[1] // 8)  # the bound, checked before the GEMM runs
        sums = int8_gemm(lp, rp).view(m, 8, n).to(torch.int64)  # T_w, w = 0..7
        total = sums if total is None else total.add_(sums)
    weights = torch.tensor(_WEIGHTS, dtype=torch.int64, device=total.device).view(1, 8, 1)
    signed = torch.mul(total, weights).sum(dim=1)
    offset = torch.tensor(_OFFSET, dtype=torch.int64, device=signed.device)
    correction = torch.add(left.sums, right.sums).mul_(offset)
    constant = torch.mul(torch.mul(offset, offset), depth)
    return signed.add_(correction).sub_(constant)
