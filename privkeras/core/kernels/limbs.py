"""Exact Z_2^64 matrix products from float64 GEMMs ("limb" matmul).

Many accelerators and BLAS libraries multiply float64 matrices fast and int64
matrices slowly or not at all (numpy has no int64 BLAS; torch has no int64
matmul on CUDA; CPUs without a 64-bit vector multiply run int64 matmul 25-40x
slower than float64 GEMM). A ring element is therefore split into three
signed limbs

    a = a0 + a1 * 2^22 + a2 * 2^43   (mod 2^64),
    a0 in [-2^21, 2^21),  a1, a2 in [-2^20, 2^20),

and a @ b mod 2^64 is rebuilt from the limb products whose weight stays below
2^64 (a1 * b2 and up have weight 2^65 and more, so they vanish mod 2^64):

    a @ b = A0B0 + 2^22 (A0B1 + A1B0) + 2^43 (A0B2 + A2B0) + 2^44 A1B1  (mod 2^64).

Schoolbook, that is six GEMMs (`PRODUCT_TERMS`, `limb_matmul_exact`). The
route kernels take (`limb_matmul`) needs five GEMM-sized products in two
BLAS calls, by Karatsuba's identity on the 2^22 term and by folding the 2^44
term into the 2^43 one (only its value mod 2^21 matters there):

    K   = (A0 + A1) @ (B0 + B1)          one batched call: A0B0, A1B1, K
    T43 = [A0 | A2] @ [B2 ; B0]          one call of depth 2k
    a @ b = A0B0 + 2^22 (K - A0B0 - A1B1) + 2^43 (T43 + 2 A1B1)  (mod 2^64).

Exactness: float64 holds every integer of magnitude at most 2^53, so a GEMM
is exact, whatever order BLAS adds in, when the sum of the magnitudes of the
products along the depth is at most 2^53. `GEMM_TERMS` lists, per BLAS
product of each route, the largest magnitude one depth step can add; the
route cuts the depth into chunks of at most `max_exact_depth(terms)` before
it runs (2048 for schoolbook, `KARATSUBA_MAX_DEPTH` = 910 for the route),
and adds the chunks' ring results mod 2^64. The result is bit-identical to
int64 matmul with wrap-around.

The split of an operand that does not change between calls (a model's
weights, their masks) is worth keeping: `LimbOperand` is that split, and the
kernels keep one per tensor they see twice (see `RingKernels.prepare`).

Notes:
    The splitting trick for exact integer products on floating-point units
    is Ozaki et al., "Error-free transformations of matrix multiplication",
    Numerical Algorithms 2012. CrypTen's CUDA tensors split int64 into three
    or four unsigned blocks of 22 or 16 bits in the same spirit; signed limbs
    halve the largest limb product against unsigned ones. Karatsuba's
    identity (Karatsuba and Ofman 1962) trades one product for additions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privkeras.core.kernels.base import RingKernels

__all__ = [
    "FLOAT64_EXACT",
    "GEMM_TERMS",
    "KARATSUBA_MAX_DEPTH",
    "LIMB_BITS",
    "LIMB_MAGNITUDES",
    "LIMB_SHIFTS",
    "MAX_EXACT_DEPTH",
    "PRODUCT_TERMS",
    "LimbOperand",
    "check_exact_depth",
    "limb_matmul",
    "limb_matmul_exact",
    "max_exact_depth",
    "prepare_limb_operand",
    "signed_limbs",
    "split_limbs",
]

#: Width in bits of each limb, least significant first.
LIMB_BITS = (22, 21, 21)
#: Weight 2^shift of each limb.
LIMB_SHIFTS = (0, 22, 43)
#: The largest magnitude of each limb (limb i lies in [-2^(w-1), 2^(w-1))).
LIMB_MAGNITUDES = tuple(1 << (w - 1) for w in LIMB_BITS)
#: (shift, limb pairs) of every limb product whose weight is below 2^64 (schoolbook).
PRODUCT_TERMS = (
    (0, ((0, 0),)),
    (22, ((0, 1), (1, 0))),
    (43, ((0, 2), (2, 0))),
    (44, ((1, 1),)),
)
#: Every integer of magnitude up to this is exact in float64.
FLOAT64_EXACT = 2**53

_A0, _A1, _A2 = LIMB_MAGNITUDES
#: Per route, per BLAS product: the largest magnitude one step of depth adds to
#: an output element (the sum over the limb pairs multiplied along that depth).
GEMM_TERMS = {
    "schoolbook": {
        "A0B0": _A0 * _A0,
        "A0B1+A1B0": 2 * _A0 * _A1,  # two GEMMs of depth k, added: 2^42
        "A0B2+A2B0": 2 * _A0 * _A2,
        "A1B1": _A1 * _A1,
    },
    "karatsuba": {
        "A0B0": _A0 * _A0,
        "A1B1": _A1 * _A1,
        "(A0+A1)(B0+B1)": (_A0 + _A1) ** 2,
        "[A0|A2][B2;B0]": _A0 * _A2 + _A2 * _A0,
    },
}


def max_exact_depth(terms: dict[str, int]) -> int:
    """The largest depth k for which every partial sum of every product stays within 2^53."""
    return FLOAT64_EXACT // max(terms.values())


#: Largest depth of one schoolbook chunk: 2048 * 2^42 = 2^53.
MAX_EXACT_DEPTH = max_exact_depth(GEMM_TERMS["schoolbook"])
#: Largest depth of one chunk of the route kernels take: 910 * 9 * 2^40 < 2^53.
KARATSUBA_MAX_DEPTH = max_exact_depth(GEMM_TERMS["karatsuba"])

Tensor = Any


def check_exact_depth(depth: int, route: str = "karatsuba") -> None:
    """Raises unless every partial sum of `route`'s GEMMs of depth `depth` is exact.

    Raises:
        ValueError: If `depth` times the largest per-step magnitude exceeds 2^53.
    """
    terms = GEMM_TERMS[route]
    worst = depth * max(terms.values())
    if depth < 0 or worst > FLOAT64_EXACT:
        raise ValueError(
            f"Expected a limb GEMM depth of at most {max_exact_depth(terms)} for the {route} "
            f"route (partial sums up to 2^53 are exact in float64). Received: depth={depth}"
        )


def signed_limbs(kernels: RingKernels, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three signed limbs of ring tensor `a`, as int64 tensors of its library.

    Limb 0 is the low 22 bits read as a signed number; the rest, shifted down
    exactly, is split the same way into 21 and 21 bits (the top limb wraps, as
    its weight 2^43 only needs it mod 2^21). Nine shifts and subtractions.
    """
    k = kernels
    a0 = k.shift_right_arithmetic(k.shift_left(a, 42), 42)
    rest = k.shift_right_arithmetic(k.sub(a, a0), 22)
    a1 = k.shift_right_arithmetic(k.shift_left(rest, 43), 43)
    a2 = k.shift_right_arithmetic(k.shift_left(k.sub(rest, a1), 22), 43)
    return a0, a1, a2


def split_limbs(kernels: RingKernels, a: Tensor) -> list[Tensor]:
    """The signed limbs of ring tensor `a` as float64 tensors of the same library.

    Limb i holds bits [LIMB_SHIFTS[i], LIMB_SHIFTS[i] + LIMB_BITS[i]) of `a`,
    re-centred to [-2^(w-1), 2^(w-1)) with a carry into the next limb; the last
    limb is only defined mod 2^w, which is all its weight needs.
    """
    return [kernels.to_float64(limb) for limb in signed_limbs(kernels, a)]


@dataclass(frozen=True)
class LimbOperand:
    """The float64 layout of one operand of the Karatsuba limb route, per depth chunk.

    For a left operand (..., m, k), chunk c holds `batched` = [A0, A1, A0 + A1]
    stacked on a new leading axis, (3, ..., m, kc), and `paired` = [A0 | A2]
    along the depth, (..., m, 2 kc). For a right operand (..., k, n):
    [B0, B1, B0 + B1] as (3, ..., kc, n) and [B2 ; B0] as (..., 2 kc, n).

    Attributes:
        side: "left" or "right".
        shape: The ring operand's shape.
        chunk: Depth of every chunk but the last.
        batched: One float64 tensor per chunk.
        paired: One float64 tensor per chunk.
    """

    side: str
    shape: tuple[int, ...]
    chunk: int
    batched: tuple[Tensor, ...]
    paired: tuple[Tensor, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of float64 this split holds (5 per ring element)."""
        size = 1
        for s in self.shape:
            size *= s
        return 8 * 5 * size


def _depth_cuts(depth: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, depth)) for start in range(0, max(depth, 1), chunk)]


def prepare_limb_operand(
    kernels: RingKernels, a: Tensor, side: str, chunk: int = KARATSUBA_MAX_DEPTH
) -> LimbOperand:
    """Splits ring tensor `a` once into the layout `limb_matmul` multiplies.

    Args:
        kernels: The kernels of `a`'s library.
        a: A ring operand of at least two axes.
        side: "left" for the `a` of `a @ b`, "right" for the `b`.
        chunk: Depth per chunk, at most `KARATSUBA_MAX_DEPTH`.

    Raises:
        ValueError: For a bad side or a chunk beyond the exactness bound.
    """
    if side not in ("left", "right"):
        raise ValueError(f"Expected side 'left' or 'right'. Received: side={side!r}")
    check_exact_depth(chunk)
    shape = kernels.shape(a)
    depth_axis = -1 if side == "left" else -2
    cat_axis = len(shape) + depth_axis
    k = kernels
    a0, a1, a2 = signed_limbs(k, a)
    batched, paired = [], []
    for cut in _depth_cuts(shape[depth_axis], chunk):
        key = (Ellipsis, cut) if side == "left" else (Ellipsis, cut, slice(None))
        c0, c1, c2 = (k.getitem(limb, key) for limb in (a0, a1, a2))
        batched.append(k.to_float64(k.stack([c0, c1, k.add(c0, c1)], axis=0)))
        pair = (c0, c2) if side == "left" else (c2, c0)
        paired.append(k.to_float64(k.concat(pair, axis=cat_axis)))
    return LimbOperand(side, tuple(shape), chunk, tuple(batched), tuple(paired))


def _align_batched(left: Tensor, right: Tensor, kernels: RingKernels) -> tuple[Tensor, Tensor]:
    """Inserts unit axes after the stacking axis so that batch axes broadcast."""
    lr, rr = len(kernels.shape(left)), len(kernels.shape(right))
    if lr < rr:
        s = kernels.shape(left)
        left = kernels.reshape(left, (s[0], *([1] * (rr - lr)), *s[1:]))
    elif rr < lr:
        s = kernels.shape(right)
        right = kernels.reshape(right, (s[0], *([1] * (lr - rr)), *s[1:]))
    return left, right


def _karatsuba_chunk(kernels: RingKernels, left_batched, left_paired, right_batched, right_paired):
    """One depth chunk of the route: two BLAS calls, the ring result of the chunk."""
    k = kernels
    left_batched, right_batched = _align_batched(left_batched, right_batched, k)
    products = k.float_to_ring(k.float_matmul(left_batched, right_batched))
    t43 = k.float_to_ring(k.float_matmul(left_paired, right_paired))
    t0, t11, kara = (k.getitem(products, i) for i in range(3))
    t22 = k.sub(k.sub(kara, t0), t11)
    t43 = k.add(t43, k.add(t11, t11))
    return k.add(t0, k.add(k.shift_left(t22, 22), k.shift_left(t43, 43)))


def limb_matmul(
    kernels: RingKernels,
    a: Tensor | LimbOperand,
    b: Tensor | LimbOperand,
    depth_chunk: int = KARATSUBA_MAX_DEPTH,
) -> Tensor:
    """`a @ b` mod 2^64 through float64 GEMMs on limbs, bit-identical to int64 matmul.

    Args:
        kernels: The ring kernels of the library `a` and `b` belong to (only
            their public interface is used: ring ops, `to_float64`,
            `float_matmul`, `float_to_ring`).
        a: Ring tensor of shape (..., m, k), or its left `LimbOperand`.
        b: Ring tensor of shape (..., k, n), or its right `LimbOperand`.
        depth_chunk: Largest depth multiplied at once, in [1, MAX_EXACT_DEPTH];
            chunks never exceed `KARATSUBA_MAX_DEPTH`. Prepared operands
            must have been split with the same chunk.

    Returns:
        The ring tensor `a @ b` of shape (..., m, n).

    Raises:
        ValueError: If `depth_chunk` is outside [1, MAX_EXACT_DEPTH] or the
            prepared operands were split with different chunks.
    """
    if not 1 <= depth_chunk <= MAX_EXACT_DEPTH:
        raise ValueError(
            f"Expected depth_chunk in [1, {MAX_EXACT_DEPTH}] (float64 stays exact up to "
            f"{MAX_EXACT_DEPTH}). Received: depth_chunk={depth_chunk}"
        )
    chunk = min(depth_chunk, KARATSUBA_MAX_DEPTH)
    left = a if isinstance(a, LimbOperand) else prepare_limb_operand(kernels, a, "left", chunk)
    right = b if isinstance(b, LimbOperand) else prepare_limb_operand(kernels, b, "right", chunk)
    if left.chunk != right.chunk or left.side != "left" or right.side != "right":
        raise ValueError(
            "Expected a left and a right LimbOperand split with the same depth chunk. "
            f"Received: {left.side} chunk={left.chunk}, {right.side} chunk={right.chunk}"
        )
    check_exact_depth(left.chunk)  # the bound, checked before any GEMM of the route runs
    total = None
    for parts in zip(left.batched, left.paired, right.batched, right.paired):
        part = _karatsuba_chunk(kernels, *parts)
        total = part if total is None else kernels.add(total, part)
    return total


def limb_matmul_exact(kernels: RingKernels, a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` mod 2^64 from the six schoolbook GEMMs; exact for depth <= MAX_EXACT_DEPTH.

    The reference the faster route is tested against.
    """
    check_exact_depth(kernels.shape(a)[-1], "schoolbook")
    a_limbs = split_limbs(kernels, a)
    b_limbs = split_limbs(kernels, b)
    out = None
    for shift, pairs in PRODUCT_TERMS:
        exact = None
        for i, j in pairs:
            product = kernels.float_matmul(a_limbs[i], b_limbs[j])
            exact = product if exact is None else exact + product
        term = kernels.shift_left(kernels.float_to_ring(exact), shift)
        out = term if out is None else kernels.add(out, term)
    return out


def depth_chunks(depth: int, chunk: int) -> Sequence[slice]:
    """The depth slices a product of depth `depth` is cut into."""
    return _depth_cuts(depth, chunk)
