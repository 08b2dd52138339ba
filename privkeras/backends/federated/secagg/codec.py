"""Encoding real updates into Z_2^b for masking, with clipping and stochastic rounding.

`RingCodec` maps a real vector x to integers round(x / gamma) with unbiased
stochastic rounding (each coordinate rounds up with probability equal to its
fractional part, drawn from a `SecureStream`), and reduces them mod 2^b. The
granularity gamma is chosen by `RoundParameters` so that the sum of every
owner's clipped, rounded (and, with distributed DP, noised) values never leaves
the signed range (-2^(b-1), 2^(b-1)): the decoded sum then equals the sum of
the owners' encodings exactly, and the plain sum within n * gamma (a random,
unbiased error of standard deviation at most gamma * sqrt(n) / 2).

This is `privkeras.core.fixed_point.FixedPointCodec` narrowed to the masking
ring: the core codec rounds to nearest with 2^-f steps in Z_2^64; secure
aggregation needs a 32-bit ring (the masked upload is then exactly the size of
the float32 update), a step fitted to the clipping range and the number of
owners, and unbiased rounding so that errors average out across owners
(rounding to nearest would bias every owner the same way).

Example:

```python
codec = RingCodec(ring_bits=32, granularity=1e-6, clip_range=1.0)
ring = codec.encode(np.array([0.25, -3.0]), SecureStream())   # -3.0 is clipped to -1.0
codec.decode(ring)                                             # about [0.25, -1.0]
```
"""

from __future__ import annotations

import math

import numpy as np

from privkeras.core.random import SecureStream
from privkeras.errors import PrecisionOverflowError

__all__ = ["SUPPORTED_RING_BITS", "RingCodec"]

SUPPORTED_RING_BITS = (32, 64)
#: Encoded magnitudes stay below 2^52 so that float64 holds them exactly.
MAX_LEVELS = 2.0**52
_MAX_ROUNDING_TRIES = 1000


class RingCodec:
    """Real vectors to Z_2^ring_bits and back.

    Args:
        ring_bits: 32 (uint32 on the wire) or 64.
        granularity: gamma, the value of one ring step.
        clip_range: c: each coordinate is clipped to [-c, c] before encoding.
    """

    def __init__(self, ring_bits: int, granularity: float, clip_range: float):
        if ring_bits not in SUPPORTED_RING_BITS:
            raise ValueError(
                f"Expected ring_bits in {list(SUPPORTED_RING_BITS)}. Received: ring_bits={ring_bits!r}"
            )
        if not (granularity > 0 and math.isfinite(granularity)):
            raise ValueError(f"Expected granularity > 0. Received: granularity={granularity!r}")
        if not (clip_range > 0 and math.isfinite(clip_range)):
            raise ValueError(f"Expected clip_range > 0. Received: clip_range={clip_range!r}")
        if clip_range / granularity > MAX_LEVELS:
            raise ValueError(
                f"Expected clip_range / granularity <= 2^52. Received: {clip_range / granularity:g}"
            )
        self.ring_bits = ring_bits
        self.granularity = float(granularity)
        self.clip_range = float(clip_range)
        self.dtype = np.dtype(f"uint{ring_bits}")

    def __repr__(self) -> str:
        return (
            f"RingCodec(ring_bits={self.ring_bits}, granularity={self.granularity:.6g}, "
            f"clip_range={self.clip_range:g})"
        )

    @staticmethod
    def check_finite(update: np.ndarray, name: str = "update") -> np.ndarray:
        """`update` as a flat float64 array; refuses NaN and infinities."""
        values = np.asarray(update, dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            bad = int(np.sum(~np.isfinite(values)))
            raise PrecisionOverflowError(
                f"Expected finite values in {name}. Received: {bad} NaN or infinite values"
            )
        return values

    def quantize(self, values: np.ndarray, stream: SecureStream) -> np.ndarray:
        """Stochastic rounding of values / gamma to int64 (values already clipped)."""
        scaled = values / self.granularity
        low = np.floor(scaled)
        up = stream.uniform(scaled.shape) < (scaled - low)
        return low.astype(np.int64) + up

    def quantize_bounded(
        self, values: np.ndarray, l2_bound: float, stream: SecureStream
    ) -> np.ndarray:
        """Conditional stochastic rounding: redraw until the L2 norm is <= `l2_bound`.

        Kairouz, Liu and Steinke (ICML 2021), Section 4.1: with the bound of
        their Theorem 1 a draw fails with probability <= beta, and a bound of
        ||x / gamma|| + sqrt(d) never fails.
        """
        for _ in range(_MAX_ROUNDING_TRIES):
            rounded = self.quantize(values, stream)
            if math.sqrt(float(np.dot(rounded.astype(np.float64), rounded))) <= l2_bound:
                return rounded
        raise PrecisionOverflowError(
            f"Expected a stochastic rounding within the L2 bound {l2_bound:g} in "
            f"{_MAX_ROUNDING_TRIES} draws. Received: none (is the update clipped?)"
        )

    def encode(self, update: np.ndarray, stream: SecureStream) -> np.ndarray:
        """Clip to [-c, c], round stochastically, reduce mod 2^b."""
        values = np.clip(self.check_finite(update), -self.clip_range, self.clip_range)
        return self.to_ring(self.quantize(values, stream))

    def to_ring(self, integers: np.ndarray) -> np.ndarray:
        """int64 integers mod 2^b as the ring's unsigned dtype."""
        return integers.astype(np.uint64).astype(self.dtype)

    def signed(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements as signed integers in [-2^(b-1), 2^(b-1))."""
        return np.asarray(ring, dtype=self.dtype).astype(f"int{self.ring_bits}").astype(np.int64)

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements (a sum of encodings) to float64 values."""
        return self.signed(ring).astype(np.float64) * self.granularity
