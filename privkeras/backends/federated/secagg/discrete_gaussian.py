"""Exact sampling of the discrete Gaussian N_Z(0, sigma^2) from secure randomness.

The discrete Gaussian gives each integer y probability proportional to
exp(-y^2 / (2 sigma^2)). Sampling follows Canonne, Kamath and Steinke, "The
Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithms 1-3:
Bernoulli(exp(-gamma)) from Bernoulli(gamma / k) trials, a discrete Laplace
proposal of integer scale t, and a Bernoulli(exp(-(|Y| - sigma^2/t)^2 /
(2 sigma^2))) acceptance. Every step is integer arithmetic on uniform integers
drawn by rejection from a `SecureStream`: no floating point, so the output
distribution is exactly the discrete Gaussian (the floating-point attacks on
Laplace and Gaussian noise of Mironov, CCS 2012, do not apply).

To keep all numbers inside int64 the variance is sigma^2 = t * m for integers
t and m (then sigma^2 / t = m is an integer): `DiscreteGaussian(sigma)` picks
the smallest such variance at or above sigma^2 with t near sigma, and reports
it as `variance`; privacy accounting uses that exact value. The algorithm is
correct for any t > 0 (CKS's proof of Algorithm 3 does not depend on t); t near
sigma keeps the acceptance rate high.

Example:

```python
from privkeras.core.random import SecureStream
noise = DiscreteGaussian(1000.0).sample(5, SecureStream())   # int64 array
```
"""

from __future__ import annotations

import math

import numpy as np

from privkeras.core.random import SecureStream

__all__ = [
    "MAX_SIGMA",
    "DiscreteGaussian",
    "bernoulli_exp_neg",
    "discrete_laplace",
    "uniform_integers",
]

#: Largest supported standard deviation (keeps (|Y| - m)^2 and 2tm inside int64).
MAX_SIGMA = 2.0**28
#: Above this, |Y| - m is squared with Python integers instead of int64.
_SQUARE_SAFE = 1 << 31


def uniform_integers(bounds: np.ndarray | int, size: int, stream: SecureStream) -> np.ndarray:
    """Uniform integers in [0, bound) for int64 bounds in [1, 2^62], by rejection.

    Args:
        bounds: One bound (the fast path), or one per output.
        size: Number of outputs.
        stream: Source of randomness.
    """
    if np.ndim(bounds) == 0:
        return _uniform_below_scalar(int(bounds), size, stream)
    bounds = np.asarray(bounds, dtype=np.int64)
    if size and (bounds.min() < 1 or bounds.max() > (1 << 62)):
        raise ValueError(f"Expected bounds in [1, 2^62]. Received: min={bounds.min()}")
    # frexp's exponent of float(bound - 1) is >= its bit length, so 2^bits >= bound.
    bits = np.maximum(np.frexp((bounds - 1).astype(np.float64))[1], 1).astype(np.uint64)
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        values = (_words(todo.size, stream) >> (np.uint64(64) - bits[todo])).astype(np.int64)
        ok = values < bounds[todo]
        out[todo[ok]] = values[ok]
        todo = todo[~ok]
    return out


def _words(count: int, stream: SecureStream) -> np.ndarray:
    return np.frombuffer(stream.random_bytes(8 * count), dtype="<u8").astype(np.uint64)


def _uniform_below_scalar(bound: int, size: int, stream: SecureStream) -> np.ndarray:
    if not 1 <= bound <= 1 << 62:
        raise ValueError(f"Expected a bound in [1, 2^62]. Received: bound={bound}")
    shift = np.uint64(64 - max(1, (bound - 1).bit_length()))
    rate = bound / float(1 << (64 - int(shift)))  # acceptance probability, >= 1/2
    parts, have = [], 0
    while have < size:
        draw = (_words(int((size - have) / rate * 1.05) + 8, stream) >> shift).astype(np.int64)
        draw = draw[draw < bound]
        parts.append(draw)
        have += draw.size
    return np.concatenate(parts)[:size] if parts else np.empty(0, dtype=np.int64)


def _pick(values, index):
    """values[index] for arrays, values itself for scalars."""
    return values if np.ndim(values) == 0 else values[index]


def _bernoulli_ratio(num, den, size: int, stream: SecureStream) -> np.ndarray:
    """Bernoulli(num / den) for int64 0 <= num <= den, den >= 1 (scalars or arrays)."""
    return uniform_integers(den, size, stream) < num


def _bernoulli_exp_neg_unit(num, den, size: int, stream: SecureStream) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for num/den in [0, 1] (CKS Algorithm 1, first case).

    K counts successes of Bernoulli(gamma / K), K = 1, 2, ...; the output is 1
    when the first failure comes at an odd K. Bernoulli(gamma / K) is the product
    of independent Bernoulli(gamma) and Bernoulli(1 / K).
    """
    k = np.ones(size, dtype=np.int64)
    active = np.arange(size)
    step = 1
    while active.size:
        success = _bernoulli_ratio(_pick(num, active), _pick(den, active), active.size, stream)
        if step > 1:  # K is the same for every active draw: one scalar bound
            success &= uniform_integers(step, active.size, stream) == 0
        k[active[success]] += 1
        active = active[success]
        step += 1
    return (k % 2) == 1


def bernoulli_exp_neg(num, den, stream: SecureStream) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) for int64 num >= 0, den >= 1 (CKS Algorithm 1).

    For gamma = num/den > 1: floor(gamma) Bernoulli(exp(-1)) trials must all
    succeed, then one Bernoulli(exp(-(gamma - floor(gamma)))).
    """
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    whole, part = np.divmod(num, den)
    alive = np.ones(num.shape, dtype=bool)
    step = 0
    pending = np.flatnonzero(whole > step)
    while pending.size:
        alive[pending] &= _bernoulli_exp_neg_unit(1, 1, pending.size, stream)
        step += 1
        pending = np.flatnonzero((whole > step) & alive)
    out = np.zeros(num.shape, dtype=bool)
    rest = np.flatnonzero(alive)
    out[rest] = _bernoulli_exp_neg_unit(part[rest], _pick(den, rest), rest.size, stream)
    return out


def _uniform_below(bound: int, stream: SecureStream) -> int:
    """A uniform Python integer in [0, bound), by rejection."""
    bits = max(1, (bound - 1).bit_length())
    while True:
        draw = int.from_bytes(stream.random_bytes((bits + 7) // 8), "little") & ((1 << bits) - 1)
        if draw < bound:
            return draw


def _bernoulli_exp_neg_unit_big(num: int, den: int, stream: SecureStream) -> bool:
    """`_bernoulli_exp_neg_unit` for one pair of Python integers (num <= den)."""
    k = 1
    while _uniform_below(den * k, stream) < num:
        k += 1
    return k % 2 == 1


def _bernoulli_exp_neg_big(num: int, den: int, stream: SecureStream) -> bool:
    """Bernoulli(exp(-num/den)) with Python integers (for the rare huge exponents)."""
    whole, part = divmod(num, den)
    for _ in range(whole):
        if not _bernoulli_exp_neg_unit_big(1, 1, stream):
            return False
    return _bernoulli_exp_neg_unit_big(part, den, stream)


def discrete_laplace(scale: int, size: int, stream: SecureStream) -> np.ndarray:
    """Exact samples with P[y] proportional to exp(-|y| / scale), integer scale >= 1 (CKS Alg. 2)."""
    out = np.empty(size, dtype=np.int64)
    filled = 0
    t = np.int64(scale)
    while filled < size:
        batch = max(16, int(1.6 * (size - filled)))
        u = uniform_integers(t, batch, stream)
        u = u[bernoulli_exp_neg(u, t, stream)]
        v = np.zeros(u.size, dtype=np.int64)
        counting = np.arange(u.size)
        while counting.size:  # V ~ Geometric(1 - e^-1): count Bernoulli(exp(-1)) successes
            more = _bernoulli_exp_neg_unit(1, 1, counting.size, stream)
            v[counting[more]] += 1
            counting = counting[more]
        magnitude = u + t * v
        sign = uniform_integers(2, u.size, stream)
        valid = ~((sign == 1) & (magnitude == 0))
        values = np.where(sign == 1, -magnitude, magnitude)[valid]
        take = min(values.size, size - filled)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


class DiscreteGaussian:
    """The discrete Gaussian N_Z(0, t * m) with integers t, m; sampled exactly.

    Args:
        sigma: The wanted standard deviation, in (0, MAX_SIGMA]. The variance
            used is the smallest t * m >= sigma^2 with t in [sigma/2, 2 sigma + 1]
            (t near sigma for sigma >= 64), so `std` is at most about
            sigma + 1/2 (relative excess about 1 / (2 sigma)).

    Attributes:
        t: The integer scale of the Laplace proposal.
        m: sigma^2 / t.
        variance: t * m, exactly (an int).
        std: sqrt(variance).
    """

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not 0 < sigma <= MAX_SIGMA:
            raise ValueError(f"Expected sigma in (0, 2^28]. Received: sigma={sigma}")
        self.t, self.m = _integer_variance(sigma)
        self.variance = self.t * self.m
        self.std = math.sqrt(self.variance)

    @classmethod
    def from_parameters(cls, t: int, m: int) -> DiscreteGaussian:
        """The discrete Gaussian of variance exactly t * m."""
        if not (isinstance(t, int) and isinstance(m, int) and t >= 1 and m >= 1):
            raise ValueError(f"Expected integers t, m >= 1. Received: t={t!r}, m={m!r}")
        if t * m > MAX_SIGMA**2:
            raise ValueError(f"Expected t * m <= 2^56. Received: t * m = {t * m}")
        self = cls.__new__(cls)
        self.t, self.m, self.variance = t, m, t * m
        self.std = math.sqrt(self.variance)
        return self

    def __repr__(self) -> str:
        return f"DiscreteGaussian(variance={self.variance} = {self.t} * {self.m})"

    def sample(self, size: int, stream: SecureStream) -> np.ndarray:
        """`size` independent int64 samples (CKS Algorithm 3)."""
        out = np.empty(size, dtype=np.int64)
        filled = 0
        t, m = self.t, self.m
        den = 2 * t * m
        while filled < size:
            batch = max(16, int(1.4 * (size - filled)))
            y = discrete_laplace(t, batch, stream)
            gap = np.abs(y) - m
            small = np.abs(gap) < _SQUARE_SAFE
            accept = np.zeros(batch, dtype=bool)
            idx = np.flatnonzero(small)
            accept[idx] = bernoulli_exp_neg(gap[idx] * gap[idx], den, stream)
            for i in np.flatnonzero(~small):  # |Y| > 2^31: probability about exp(-2^31 / t)
                accept[i] = _bernoulli_exp_neg_big(int(gap[i]) ** 2, den, stream)
            values = y[accept]
            take = min(values.size, size - filled)
            out[filled : filled + take] = values[:take]
            filled += take
        return out


def _integer_variance(sigma: float) -> tuple[int, int]:
    """(t, m) with t * m >= sigma^2, minimal over t in [sigma/2, 2 sigma + 1]."""
    target = sigma * sigma
    if sigma >= 64:
        t = math.floor(sigma) + 1
        return t, max(1, math.ceil(target / t))
    best = None
    for t in range(max(1, math.floor(sigma / 2)), math.floor(2 * sigma) + 2):
        m = max(1, math.ceil(target / t))
        key = (t * m, abs(t - sigma))
        if best is None or key < best[0]:
            best = (key, t, m)
    return best[1], best[2]
