"""Slot-wise polynomials `p(u) = sum_k c_k u^k` on ciphertexts, with depth and scales planned.

Powers come from repeated squaring (`u^(2^h)`) and one product for the
others, so `u^k` costs `ceil(log2 k)` levels. Each term `c_k u^k` is then
computed one of two ways, whichever is shallower:

- `c_k * u^k`: one more level for the coefficient;
- `(c_k * u) * u^(k-1)`: the coefficient rides on `u`, in parallel with the power.

A monic leading term needs no coefficient at all. The engine makes activations
monic by moving the leading coefficient into the next linear layer, so
`u^2` (the square activation) costs one level and a degree-3 or degree-4
approximation costs two.

Every term must land on the same level and scale before the terms are added.
CKKS primes are only close to powers of two (a 24-bit prime can differ from
2^24 by 0.3%), so instead of relabelling scales each coefficient is encoded at
the scale that makes its term's scale exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from privkeras.backends.he.ckks import CiphertextOps

__all__ = ["PolynomialEvaluator", "power_depth"]


def power_depth(k: int) -> int:
    """Levels consumed by `u^k` with square-and-multiply."""
    return 0 if k <= 1 else math.ceil(math.log2(k))


def _term_plan(k: int, coefficient: float, leading_monic: bool) -> tuple[str, int]:
    """(method, depth) of the term `c_k u^k`."""
    if leading_monic:
        return "power", power_depth(k)
    direct = power_depth(k) + 1
    if k >= 2:
        riding = max(1, power_depth(k - 1)) + 1
        if riding < direct:
            return "riding", riding
    return "direct", direct


class PolynomialEvaluator:
    """Evaluates one polynomial slot-wise (see the module docstring).

    Args:
        coefficients: `c_0, c_1, ..., c_d`, lowest degree first, degree >= 2
            (lower degrees are affine maps and belong in linear layers).
        zero_threshold: Coefficients with |c| at or below it are dropped.
    """

    def __init__(self, coefficients: np.ndarray, zero_threshold: float = 0.0):
        coefficients = np.trim_zeros(np.asarray(coefficients, np.float64), "b")
        if len(coefficients) < 3:
            raise ValueError(
                f"Expected a polynomial of degree >= 2. Received: coefficients={coefficients}"
            )
        self.coefficients = coefficients
        self.degree = len(coefficients) - 1
        monic = coefficients[-1] == 1.0
        self.terms: dict[int, str] = {}
        depth = 0
        for k in range(1, self.degree + 1):
            c = float(coefficients[k])
            if abs(c) <= zero_threshold:
                continue
            method, term_depth = _term_plan(k, c, monic and k == self.degree)
            self.terms[k] = method
            depth = max(depth, term_depth)
        self.depth = depth

    def __repr__(self) -> str:
        return f"PolynomialEvaluator(degree={self.degree}, depth={self.depth})"

    def apply(self, ops: CiphertextOps, ct: Any) -> Any:
        """`p(ct)`, `depth` levels below `ct`."""
        level_in, scale_in = ops.level(ct), ops.scale(ct)
        target_level = level_in - self.depth
        if target_level < 0:
            raise ValueError(f"polynomial needs {self.depth} levels, {level_in} left")
        powers: dict[int, Any] = {1: ct}
        target_scale = (
            ops.scale(self._power(ops, powers, self.degree))
            if self.terms.get(self.degree) == "power"
            else scale_in
        )
        total = None
        for k, method in self.terms.items():
            term = self._term(ops, powers, k, method, target_scale)
            term = ops.mod_switch(term, target_level)
            ops.set_scale(term, target_scale)
            total = term if total is None else ops.add(total, term)
        constant = float(self.coefficients[0])
        if constant:
            total = ops.add_plain(total, ops.encode(constant, target_level, target_scale))
        return total

    def _power(self, ops: CiphertextOps, powers: dict[int, Any], k: int) -> Any:
        if k in powers:
            return powers[k]
        high = 1 << (k.bit_length() - 1)
        if high == k:
            half = self._power(ops, powers, k // 2)
            result = ops.rescale(ops.square(half))
        else:
            a, b = self._power(ops, powers, high), self._power(ops, powers, k - high)
            level = min(ops.level(a), ops.level(b))
            result = ops.rescale(ops.multiply(ops.mod_switch(a, level), ops.mod_switch(b, level)))
        powers[k] = result
        return result

    def _term(
        self, ops: CiphertextOps, powers: dict[int, Any], k: int, method: str, target_scale: float
    ) -> Any:
        c = float(self.coefficients[k])
        if method == "power":
            return self._power(ops, powers, k)
        if method == "direct":
            power = self._power(ops, powers, k)
            level = ops.level(power)
            weight_scale = target_scale * ops.prime(level) / ops.scale(power)
            return ops.rescale(ops.multiply_plain(power, ops.encode(c, level, weight_scale)))
        # riding: (c * u) * u^(k-1), the coefficient scale chosen for the final product
        u, power = powers[1], self._power(ops, powers, k - 1)
        level_u = ops.level(u)
        level = min(level_u - 1, ops.level(power))
        weight_scale = (
            target_scale * ops.prime(level_u) * ops.prime(level) / (ops.scale(u) * ops.scale(power))
        )
        scaled = ops.rescale(ops.multiply_plain(u, ops.encode(c, level_u, weight_scale)))
        scaled, power = ops.mod_switch(scaled, level), ops.mod_switch(power, level)
        return ops.rescale(ops.multiply(scaled, power))
