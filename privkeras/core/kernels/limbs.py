"""Exact Z_2^64 matrix products from float64 GEMMs ("limb" matmul).

Many accelerators and BLAS libraries multiply float64 matrices fast and int64
matrices slowly or not at all (numpy has no int64 BLAS; torch has no int64
matmul on CUDA). A ring element is therefore split into three signed limbs

    a = a0 + a1 * 2^22 + a2 * 2^43   (mod 2^64),
    a0 in [-2^21, 2^21),  a1, a2 in [-2^20, 2^20),

and a @ b mod 2^64 is rebuilt from the limb products whose weight stays below
2^64 (a1 * b2 and up have weight 2^65 and more, so they vanish mod 2^64):

    a @ b = A0B0 + 2^22 (A0B1 + A1B0) + 2^43 (A0B2 + A2B0) + 2^44 A1B1  (mod 2^64).

That is six float64 GEMMs. Each limb product is an integer of magnitude at
most 2^42, so every partial sum of a depth-k dot product (and of the two GEMMs
added per weight) is an integer of magnitude at most k * 2^42, exact in
float64 while k <= 2^11 = `MAX_EXACT_DEPTH`, whatever order BLAS adds in.
Deeper products are cut into depth chunks whose ring results are added mod
2^64. The result is bit-identical to int64 matmul with wrap-around.

Notes:
    This is the classic splitting trick for exact integer products on
    floating-point units (Ozaki et al., "Error-free transformations of matrix
    multiplication", Numerical Algorithms 2012). CrypTen's CUDA tensors split
    int64 into three or four unsigned blocks of 22 or 16 bits in the same
    spirit; signed limbs halve the largest limb product against unsigned
    ones, which keeps three limbs (six GEMMs) exact up to depth 2048.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privkeras.core.kernels.base import RingKernels

__all__ = [
    "LIMB_BITS",
    "LIMB_SHIFTS",
    "MAX_EXACT_DEPTH",
    "PRODUCT_TERMS",
    "limb_matmul",
    "limb_matmul_exact",
    "split_limbs",
]

#: Width in bits of each limb, least significant first.
LIMB_BITS = (22, 21, 21)
#: Weight 2^shift of each limb.
LIMB_SHIFTS = (0, 22, 43)
#: (shift, limb pairs) of every limb product whose weight is below 2^64.
PRODUCT_TERMS = (
    (0, ((0, 0),)),
    (22, ((0, 1), (1, 0))),
    (43, ((0, 2), (2, 0))),
    (44, ((1, 1),)),
)
#: Largest depth k for which every partial sum stays within 2^53: k * 2^42 <= 2^53.
MAX_EXACT_DEPTH = 2 ** (53 - 2 * (LIMB_BITS[0] - 1))

Tensor = Any


def split_limbs(kernels: RingKernels, a: Tensor) -> list[Tensor]:
    """The signed limbs of ring tensor `a` as float64 tensors of the same library.

    Limb i holds bits [LIMB_SHIFTS[i], LIMB_SHIFTS[i] + LIMB_BITS[i]) of `a`,
    re-centred to [-2^(w-1), 2^(w-1)) with a carry into the next limb; the last
    limb is only defined mod 2^w, which is all its weight needs.
    """
    limbs = []
    rest = a
    for width in LIMB_BITS:
        half = 1 << (width - 1)
        shifted = kernels.add(rest, kernels.constant(half))
        low = kernels.bitwise_and(shifted, kernels.constant((1 << width) - 1))
        limbs.append(kernels._to_float64(low) - float(half))
        rest = kernels.shift_right_arithmetic(shifted, width)
    return limbs


def limb_matmul_exact(kernels: RingKernels, a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` mod 2^64 from six float64 GEMMs; exact for depth <= MAX_EXACT_DEPTH."""
    a_limbs = split_limbs(kernels, a)
    b_limbs = split_limbs(kernels, b)
    out = None
    for shift, pairs in PRODUCT_TERMS:
        exact = None
        for i, j in pairs:
            product = kernels._float_matmul(a_limbs[i], b_limbs[j])
            exact = product if exact is None else exact + product
        term = kernels.shift_left(kernels._float_to_ring(exact), shift)
        out = term if out is None else kernels.add(out, term)
    return out


def limb_matmul(
    kernels: RingKernels, a: Tensor, b: Tensor, depth_chunk: int = MAX_EXACT_DEPTH
) -> Tensor:
    """`a @ b` mod 2^64 through float64 GEMMs on limbs, bit-identical to int64 matmul.

    Args:
        kernels: The ring kernels of the library `a` and `b` belong to; their
            `_limb_matmul_exact` multiplies one depth chunk (by default
            `limb_matmul_exact`, through `_to_float64`, `_float_matmul` and
            `_float_to_ring`).
        a: Ring tensor of shape (..., m, k).
        b: Ring tensor of shape (..., k, n).
        depth_chunk: Largest depth multiplied at once, in [1, MAX_EXACT_DEPTH].

    Returns:
        The ring tensor `a @ b` of shape (..., m, n).

    Raises:
        ValueError: If `depth_chunk` is outside [1, MAX_EXACT_DEPTH].
    """
    if not 1 <= depth_chunk <= MAX_EXACT_DEPTH:
        raise ValueError(
            f"Expected depth_chunk in [1, {MAX_EXACT_DEPTH}] (float64 stays exact up to "
            f"{MAX_EXACT_DEPTH}). Received: depth_chunk={depth_chunk}"
        )
    depth = kernels.shape(a)[-1]
    if depth <= depth_chunk:
        return kernels._limb_matmul_exact(a, b)
    total = None
    for start in range(0, depth, depth_chunk):
        cut = slice(start, start + depth_chunk)
        part = kernels._limb_matmul_exact(
            kernels.getitem(a, (Ellipsis, cut)),
            kernels.getitem(b, (Ellipsis, cut, slice(None))),
        )
        total = part if total is None else kernels.add(total, part)
    return total
