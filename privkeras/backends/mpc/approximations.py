"""Approximations of non-linear functions on shared tensors.

Secret-shared arithmetic offers additions, products and exact comparisons;
everything else is approximated from them, through `SharedTensor`'s public
interface only: arithmetic, `div_power_of_two` (a truncation), and the sign
bit of `negative_bit()` (a `SharedBit`, multiplied into tensors exactly by
`SharedBit.times`). The methods follow CrypTen
(Knott et al., "CrypTen: Secure Multi-Party Computation Meets Machine
Learning", NeurIPS 2021, appendix C) and are tested against numpy on the
ranges stated here (tests/backends/mpc/test_approximations.py); outside
those ranges the results are not guaranteed.

| function    | method                                              | stated range          | tested error                 |
|-------------|-----------------------------------------------------|-----------------------|------------------------------|
| exp         | cubic Taylor p(x/64), then 6 squarings               | [-16, 4]              | 1e-4 + 2e-3 e^x (abs)        |
|             |                                                     | [-150, -16]           | 1e-4 (abs)                   |
| exp_limit   | (1 + x/256)^256 (CrypTen), 8 squarings               | [-500, 0]             | 2e-3 (abs)                   |
| reciprocal  | sign, then Newton-Raphson from 3 e^(0.5-x) + 0.003   | 0.05 <= abs x <= 500  | 1e-2 relative + 2^-16 (abs)  |
| sigmoid     | 1 / (1 + exp_limit(-abs x)), mirrored by sign        | [-400, 400]           | 2e-3 (abs)                   |
| tanh        | 2 sigmoid(2x) - 1                                   | [-200, 200]           | 4e-3 (abs)                   |
| softmax     | exp(x - max x) / sum, Newton on [1, n]               | max x - x <= 150      | 1e-3 (abs)                   |
| log         | Householder iterations on exp (order 8, 2 its)       | [0.05, 100]           | 5e-3 (abs)                   |

Range tracking: inside an approximation nothing is range-checked (its
intermediate values are small by design on the stated ranges, and a
worst-case bound of, say, exp's squarings would refuse valid inputs). A
tracked input (`SharedTensor.bound` set) gives a tracked result whose bound
is the function's on its stated range (sigmoid, tanh, softmax: 1, plus the
error; reciprocal: 20; log: 4.7; exp: e^bound when bound <= 4, else
untracked); an untracked input, an untracked result.

Costs in online rounds, Pond / ABY3 (measured; Pond: 1 per product, 6 per
comparison, 1 per multiplication by a bit; ABY3: 1, 6 and 2):
exp 8 / 10; reciprocal 36 / 39 (comparison, exp_limit, 10 Newton steps);
sigmoid 22 / 26; tanh 22 / 26; softmax over n = 10: 47 / 54 (of which the
max: 28 / 32); log 40 / 60.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["exp", "exp_limit", "log", "reciprocal", "sigmoid", "softmax", "tanh"]

#: Squarings after the cubic Taylor polynomial in exp.
EXP_SQUARINGS = 6
#: Squarings in the limit approximation of exp (used where inputs are very negative).
EXP_LIMIT_SQUARINGS = 8
#: Newton-Raphson iterations of the general reciprocal.
RECIPROCAL_ITERATIONS = 10
#: Bounds of the results on the stated ranges (the function's, plus the tested error).
_UNIT_BOUND = 1.0 + 2.0**-6
_RECIPROCAL_BOUND = 20.5
_LOG_BOUND = 4.7


def _untracked(x: SharedTensor) -> tuple[SharedTensor, bool]:
    """x without its bound (nothing is range-checked inside), and whether it had one."""
    if x.bound is None:
        return x, False
    return x.with_bound(None), True


def _result(y: SharedTensor, tracked: bool, bound: float | None) -> SharedTensor:
    """The result with the function's bound on its stated range, if the input was tracked."""
    if not tracked or bound is None or bound >= y.runtime.codec.max_abs:
        return y
    return y.with_bound(bound)


def _exp_bound(input_bound: float) -> float | None:
    return None if input_bound > 4 else math.exp(input_bound) * 1.05 + 2e-3


def exp(x: SharedTensor, squarings: int = EXP_SQUARINGS) -> SharedTensor:
    """e^x as p(x / 2^n)^(2^n), p the cubic Taylor polynomial of e^t.

    Args:
        x: Shared input, in [-150, 10] for n = 6.
        squarings: n.

    Returns:
        Shared e^x. The polynomial's error (t^4 / 24 per factor, t = x / 2^n)
        and its fixed-point rounding (2^-(f+1) per factor) are amplified
        2^n times: relative error about 2^n (t^4 / 24 + 2^-(f+1)), 5e-4
        on [-16, 4] at f = 16. Below -2.3 * 2^n, |p(t)| > 1 and the result
        is garbage.

    Notes:
        CrypTen uses p(t) = 1 + t with n = 8; the cubic costs two more
        products but needs two fewer squarings and is 10-100x more accurate.
    """
    bound = x.bound
    x, tracked = _untracked(x)
    t = x.div_power_of_two(squarings)
    t2 = t.square()
    # 1 + t + t^2/2 + t^3/6 = 1 + t + t^2 (1/2 + t/6)
    y = 1.0 + t + t2 * (0.5 + t * (1.0 / 6.0))
    for _ in range(squarings):
        y = y.square()
    return _result(y, tracked, _exp_bound(bound) if tracked else None)


def exp_limit(x: SharedTensor, squarings: int = EXP_LIMIT_SQUARINGS) -> SharedTensor:
    """e^x as (1 + x / 2^n)^(2^n) (CrypTen's limit approximation), for very negative x.

    Valid on [-1.9 * 2^n, 4] (x in [-480, 4] for n = 8): 1 + x / 2^n stays
    in [-1, 1] for negative x, so large negative inputs give ~0 instead of
    garbage. Relative error about x^2 / 2^(n+1) + 2^(n - f - 1).
    """
    bound = x.bound
    x, tracked = _untracked(x)
    y = x.div_power_of_two(squarings) + 1.0
    for _ in range(squarings):
        y = y.square()
    return _result(y, tracked, _exp_bound(bound) if tracked else None)


def _newton_reciprocal(x: SharedTensor, y: SharedTensor, iterations: int) -> SharedTensor:
    for _ in range(iterations):
        y = y * (2.0 - x * y)
    return y


def reciprocal_positive(x: SharedTensor, iterations: int = RECIPROCAL_ITERATIONS) -> SharedTensor:
    """1 / x for x in [0.05, 500]: Newton-Raphson from y0 = 3 e^(0.5 - x) + 0.003.

    The start satisfies 0 < x y0 < 2 on that range, so the iteration
    e <- e^2 (e = 1 - x y) converges.
    """
    x, tracked = _untracked(x)
    y = 3.0 * exp_limit(0.5 - x) + 0.003
    return _result(_newton_reciprocal(x, y, iterations), tracked, _RECIPROCAL_BOUND)


def reciprocal(x: SharedTensor, iterations: int = RECIPROCAL_ITERATIONS) -> SharedTensor:
    """1 / x for 0.05 <= |x| <= 500 (either sign): sign by one comparison, then Newton-Raphson."""
    x, tracked = _untracked(x)
    negative = x.negative_bit()
    (x_neg,) = negative.times(x)
    y = reciprocal_positive(x - 2 * x_neg, iterations)
    (y_neg,) = negative.times(y)
    return _result(y - 2 * y_neg, tracked, _RECIPROCAL_BOUND)


def reciprocal_on_interval(x: SharedTensor, upper: float) -> SharedTensor:
    """1 / x for x known to lie in [1, upper]: Newton-Raphson from the best linear start.

    The start y0 = beta (upper + 1) - beta x, beta = 8 / (u^2 + 6u + 1), u = upper,
    equioscillates: |1 - x y0| <= E = (u - 1)^2 / (u^2 + 6u + 1) on [1, u]
    (1/17 for u = 2). Newton squares the error each iteration, so
    ceil(log2(17 ln 2 / ln(1/E))) iterations reach 2^-17.
    """
    upper = float(upper)
    if upper < 1:
        raise ValueError(f"Expected upper >= 1. Received: upper={upper}")
    beta = 8.0 / (upper * upper + 6.0 * upper + 1.0)
    error = (upper - 1.0) ** 2 / (upper * upper + 6.0 * upper + 1.0)
    iterations = (
        1 if error == 0 else max(1, math.ceil(math.log2(17 * math.log(2) / -math.log(error))))
    )
    x, tracked = _untracked(x)
    y = beta * (upper + 1.0) - x * beta
    return _result(_newton_reciprocal(x, y, iterations), tracked, _UNIT_BOUND)


def sigmoid(x: SharedTensor) -> SharedTensor:
    """1 / (1 + e^-x): computed on |x| (where 1 + e^-|x| lies in [1, 2]) and mirrored.

    Accurate to about 2e-3 on [-200, 200] with 16 fractional bits.
    """
    x, tracked = _untracked(x)
    negative = x.negative_bit()
    (x_neg,) = negative.times(x)
    positive_part = reciprocal_on_interval(exp_limit(-(x - 2 * x_neg)) + 1.0, 2.0)
    # x < 0: sigmoid(x) = 1 - sigmoid(|x|)
    (delta,) = negative.times(1.0 - 2 * positive_part)
    return _result(positive_part + delta, tracked, _UNIT_BOUND)


def tanh(x: SharedTensor) -> SharedTensor:
    """tanh x = 2 sigmoid(2x) - 1."""
    x, tracked = _untracked(x)
    return _result(2 * sigmoid(2 * x) - 1.0, tracked, _UNIT_BOUND)


def softmax(x: SharedTensor, axis: int = -1) -> SharedTensor:
    """exp(x - max x) / sum exp(x - max x) along `axis`.

    Subtracting the (exact) maximum keeps exp's input in [-(max - min), 0]
    and the denominator in [1, n]. Requires max - x <= 250.
    """
    x, tracked = _untracked(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    numerators = exp(shifted)
    denominator = numerators.sum(axis=axis, keepdims=True)
    inverse = reciprocal_on_interval(denominator, x.shape[axis])
    return _result(numerators * inverse.broadcast_to(numerators.shape), tracked, _UNIT_BOUND)


def log(x: SharedTensor, iterations: int = 2, order: int = 8) -> SharedTensor:
    """Natural logarithm for x in [0.05, 100], by Householder iterations.

    Starts from y0 = x/120 - 20 e^(-2x - 1) + 3 and applies
    y <- y - sum_{i=1..order} h^i / i with h = 1 - x e^(-y) (CrypTen's method).
    """
    x, tracked = _untracked(x)
    y = x * (1.0 / 120.0) - 20.0 * exp_limit(-2 * x - 1.0) + 3.0
    for _ in range(iterations):
        h = 1.0 - x * exp(-y)
        power = h
        correction = h
        for i in range(2, order + 1):
            power = power * h
            correction = correction + power * (1.0 / i)
        y = y - correction
    return _result(y, tracked, _LOG_BOUND)
