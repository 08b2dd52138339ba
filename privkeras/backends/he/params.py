"""CKKS encryption parameters, chosen from a model's depth within the security tables.

A CKKS modulus chain here is `[q0, s, s, ..., s, special]`: one `s`-bit prime
per multiplicative level (each rescale divides by one of them), a first prime
`q0 = s + integer_bits` that holds the decrypted result, and a special prime
for key switching (relinearization, rotations) as large as `q0`. The whole
chain must fit the largest modulus the ring degree allows at the requested
security level.

Notes:
    The bounds are those of the Homomorphic Encryption Security Standard
    (Albrecht et al., HomomorphicEncryption.org, 2018), Table 1 for ternary
    secrets, which Microsoft SEAL enforces for 128 bits
    (`seal::CoeffModulus::MaxBitCount`).

Example:

```python
from privkeras.backends.he.params import select_parameters

params = select_parameters(depth=3)
params.poly_modulus_degree, params.coeff_mod_bit_sizes   # 8192, (49, 39, 39, 39, 49)
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from privkeras.backends.he.errors import DepthExceededError
from privkeras.errors import PrivacyPolicyError

__all__ = [
    "MAX_MODULUS_BITS",
    "CKKSParameters",
    "max_depth",
    "min_scale_bits",
    "select_parameters",
]

#: security level -> ring degree N -> largest total bit count of the coefficient modulus.
MAX_MODULUS_BITS: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}

#: Bits above the scale kept in the first prime: decrypted values must stay below 2**(bits-1).
INTEGER_BITS = 10
#: Bits of absolute precision kept: CKKS noise after encryption, rescaling and key
#: switching is about 2**(log2(N) + 6 - scale_bits) (measured on digits MLPs, see
#: docs/policies/he.md), so a scale of log2(N) + 17 bits leaves errors near 5e-4.
PRECISION_BITS = 17
#: Above this scale precision no longer improves (and q0 stays <= 60 bits).
MAX_SCALE_BITS = 40
_MAX_PRIME_BITS = 60


@dataclasses.dataclass(frozen=True)
class CKKSParameters:
    """One CKKS parameter set.

    Args:
        poly_modulus_degree: Ring degree N; a ciphertext has N/2 slots.
        coeff_mod_bit_sizes: Bit sizes of the modulus chain, `[q0, s * depth, special]`.
        scale_bits: log2 of the encoding scale.
        security_level: Bits of security the chain respects.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    security_level: int = 128

    def __post_init__(self):
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        table = MAX_MODULUS_BITS.get(self.security_level)
        if table is None or self.poly_modulus_degree not in table:
            raise PrivacyPolicyError(
                f"Expected security_level in {sorted(MAX_MODULUS_BITS)} and poly_modulus_degree "
                f"in {sorted(MAX_MODULUS_BITS[128])}. Received: security_level="
                f"{self.security_level!r}, poly_modulus_degree={self.poly_modulus_degree!r}"
            )
        if len(bits) < 2 or sum(bits) > table[self.poly_modulus_degree]:
            raise PrivacyPolicyError(
                f"Expected a modulus chain of at least 2 primes totalling at most "
                f"{table[self.poly_modulus_degree]} bits for N={self.poly_modulus_degree} at "
                f"{self.security_level}-bit security. Received: coeff_mod_bit_sizes={bits} "
                f"({sum(bits)} bits)"
            )

    @property
    def depth(self) -> int:
        """Multiplicative levels available (rescales before reaching q0)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    def get_config(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "security_level": self.security_level,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CKKSParameters:
        return cls(**config)


def _chain(scale_bits: int, depth: int, integer_bits: int) -> tuple[int, ...]:
    first = scale_bits + integer_bits
    return (first, *([scale_bits] * depth), first)


def min_scale_bits(poly_modulus_degree: int) -> int:
    """The smallest scale that keeps `PRECISION_BITS` of precision in this ring."""
    return poly_modulus_degree.bit_length() - 1 + PRECISION_BITS


def _best_scale(max_bits: int, depth: int, integer_bits: int) -> int:
    """The largest scale whose chain `[s+i, s*depth, s+i]` fits `max_bits`."""
    scale = (max_bits - 2 * integer_bits) // (depth + 2)
    return min(scale, MAX_SCALE_BITS, _MAX_PRIME_BITS - integer_bits)


def max_depth(
    poly_modulus_degree: int,
    security_level: int = 128,
    scale_bits: int | None = None,
    integer_bits: int = INTEGER_BITS,
) -> int:
    """Deepest model a ring degree can evaluate at `scale_bits` (default: the minimum)."""
    max_bits = MAX_MODULUS_BITS[security_level][poly_modulus_degree]
    if scale_bits is None:
        scale_bits = min_scale_bits(poly_modulus_degree)
    return max(-1, (max_bits - 2 * (scale_bits + integer_bits)) // scale_bits)


def select_parameters(
    depth: int,
    poly_modulus_degree: int | None = None,
    scale_bits: int | None = None,
    security_level: int = 128,
    integer_bits: int = INTEGER_BITS,
) -> CKKSParameters:
    """Chooses the smallest ring that evaluates `depth` levels precisely, with the widest scale.

    The scale must keep `PRECISION_BITS` of precision for the ring
    (`min_scale_bits`); among the rings that allow it at this depth, the
    smallest wins (every operation costs in proportion to N).

    Args:
        depth: Multiplicative depth of the model (levels consumed).
        poly_modulus_degree: Fix N instead of choosing it.
        scale_bits: Fix the scale instead of choosing it.
        security_level: 128, 192 or 256.
        integer_bits: Headroom of the result above the scale.

    Returns:
        A `CKKSParameters`.

    Raises:
        DepthExceededError: When no allowed ring fits, with the depth needed
            and the depth available; raised before any key or ciphertext exists.
    """
    table = MAX_MODULUS_BITS[security_level]
    degrees = [poly_modulus_degree] if poly_modulus_degree is not None else sorted(table)
    for degree in degrees:
        max_bits = table[degree]
        scale = scale_bits if scale_bits is not None else _best_scale(max_bits, depth, integer_bits)
        if scale_bits is None and scale < min_scale_bits(degree):
            continue
        chain = _chain(scale, depth, integer_bits)
        if sum(chain) <= max_bits and chain[0] <= _MAX_PRIME_BITS:
            return CKKSParameters(degree, chain, scale, security_level)
    largest = degrees[-1]
    scale = scale_bits if scale_bits is not None else min_scale_bits(largest)
    available = max_depth(largest, security_level, scale, integer_bits)
    fixed = "the requested ring" if poly_modulus_degree is not None else "the largest allowed ring"
    raise DepthExceededError(
        f"The model needs multiplicative depth {depth}, but {fixed} (N={largest}, at most "
        f"{table[largest]} modulus bits at {security_level}-bit security) offers depth "
        f"{max(available, 0)} at a scale of 2^{scale}. Use fewer layers or lower-degree "
        f"PolynomialActivation layers, or relax poly_modulus_degree/scale_bits/security_level. "
        f"Received: depth={depth}, poly_modulus_degree={poly_modulus_degree!r}, "
        f"scale_bits={scale_bits!r}, security_level={security_level}"
    )
