"""Gaussian noise for DP-SGD: the Gaussian mechanism, exactly, on float32 gradients.

A DP step adds N(0, std^2) to every coordinate of a float32 vector x (the
clipped, summed, scaled gradients: 270k numbers for the MNIST MLP). Two
routes, both keyed from `os.urandom` at every run (the core's AES-256-CTR
`SecureStream`), never from a framework seed:

- `ExactGaussianNoise` (the host route: CPU models, and every model with
  `secure_noise=True`) returns `RN32(x + std * N)`, the float32 nearest to
  the real number `x + std * N`, where N is an ideal Gaussian: Box-Muller on
  uniforms with infinitely many random bits, of which it draws as many as
  the rounding needs. 52 bits per uniform and float64 arithmetic with an
  error bound settle all but about one coordinate in 100,000 (2.7 per step
  of the MNIST MLP); those are recomputed with 64 more random bits per
  uniform in long double, and, if still undecided, in mpmath interval
  arithmetic with 64 more, and so on, until the float32 is certain. The
  output is then a deterministic function of the ideal Gaussian
  mechanism's real-valued output: post-processing, with exactly the privacy
  the accountant assumes.
- `NoiseWords` + `gaussian_from_words` (the device route: accelerator and
  XLA models, where the step cannot call back to the host): the host draws
  the random words (AES-CTR, one step ahead), the step turns them into
  float64 Gaussians in the graph and rounds `x + std * N` to float32. The
  radius uniform has 104 bits, so samples reach 12.0 sigma and the sampler's
  tail leaves `2^-104` per pair, which `failure_per_step` reports for the
  accountant. Its float32 rounding is that of a float64 computation: it
  matches the exact one except in about one coordinate in 2^26, by one ulp.

Notes:
    The floating-point attack. Mironov ("On significance of the least
    significant bits for differential privacy", CCS 2012) showed that
    textbook floating-point Laplace noise leaks the input through the set of
    values the sampler can output; Jin, McMurtry, Rubinstein and Ohrimenko
    ("Are we there yet? Timing and floating-point attacks on differential
    privacy systems", IEEE S&P 2022) did the same for Gaussian samplers,
    including Opacus's, and Holohan and Braghin ("Secure random sampling in
    differential privacy", ESORICS 2021) proposed the mitigation Opacus's
    `secure_mode` uses: a sum of several samples, which makes reconstruction
    hard without making the output exact. The host route goes further, in
    the spirit of Mironov's snapping mechanism (round the output, so that
    the noise's fine structure cannot show) and as the interval refining of
    Haney, Desfontaines, Hartman, Shrestha and Hay ("Precision-based attacks
    and interval refining: how to break, then fix, differential privacy on
    finite computers", PETS 2023) does: it outputs exactly the rounded ideal
    mechanism, so no output is possible under one dataset and impossible
    under its neighbour, and the tails are complete (no truncation: the
    uniforms get as many bits as a sample needs, up to `max_extra_bits`,
    whose `2^-(52 + max_extra_bits)` per pair `failure_per_step` reports:
    2^-1012, about 1e-305).
    The error bound of the float64 pass assumes numpy's `log` and `tan` are
    within 2^-48 relative (16 to 32 ulp) of the truth (numpy states 4 ulp;
    the tests measure 0.5 against mpmath), and correctly rounded `sqrt` and
    arithmetic (IEEE 754).

    What this does not cover: x itself is computed in float32 by the
    backend, so the sensitivity of the clipped sum is C up to float32
    rounding of the clipping and the sum (Casacuberta, Shoemate, Vadhan and
    Wagaman, "Widespread underestimation of sensitivity in differentially
    private libraries", CCS 2022), relative errors of order `B 2^-24`.

    Cost (2-core AMD EPYC Zen 5, 270k samples): see the `dpsgd` benchmark's
    `noise/*` rows.
"""

from __future__ import annotations

import concurrent.futures
import math
from typing import Any

import numpy as np
from mpmath import iv, mp, mpf

from privkeras.core.random import SecureStream

__all__ = [
    "DEVICE_WORDS_PER_PAIR",
    "ExactGaussianNoise",
    "HostNoise",
    "NoiseWords",
    "gaussian_from_words",
]

_ONE = np.uint64(0x3FF0000000000000)  # bits of 1.0
_TWO = np.uint64(0x4000000000000000)  # bits of 2.0
_MANTISSA = np.uint64((1 << 52) - 1)
_SIGN = np.uint64(1 << 63)
_ULP = 2.0**-52
#: Relative error assumed for numpy's float64 `log` and `tan`: 2^-48, 16 to 32 ulp (numpy
#: states 4; the tests measure 0.5 against mpmath). The error bound below is built on it.
FUNCTION_ERROR = 2.0**-48
#: Uniform words per pair of samples on the device route: radius (2) and angle (1).
DEVICE_WORDS_PER_PAIR = 3
#: Relative margin for the rounding of `x + std N` in float64 and of the interval's ends:
#: the step widens each coordinate's bound by `MARGIN * (max|x| + r)`.
MARGIN = 2.0**-49
#: Pairs per block of the float64 pass: its scratch arrays (4 x 128 KB) stay in the core's
#: cache (the whole vector's did not: in a step, the pass ran at memory speed, 2x slower).
BLOCK = 16_384


def _from_bits(words: np.ndarray, exponent: np.uint64, out: np.ndarray) -> np.ndarray:
    """The low 52 bits of `words` as the mantissa of a float64 with `exponent` bits: exact."""
    bits = out.view(np.uint64)
    np.bitwise_and(words, _MANTISSA, out=bits)
    np.bitwise_or(bits, exponent, out=bits)
    return out


class HostDraw:
    """One step's draw of the host route, everything that does not depend on x.

    Attributes:
        normal: `std N` computed in float64, `(size,)`.
        error: float32 upper bounds of `|std N - normal|` plus the rounding margin
            (without the `2^-49 max|x|` term, which depends on x), `(size,)`.
        words: The random words it was made from: radius words, then angle words.
    """

    def __init__(self, size: int, pairs: int):
        self.normal = np.empty(2 * pairs)
        self.error = np.empty(2 * pairs, dtype=np.float32)
        self.words = np.empty(2 * pairs, dtype=np.uint64)
        self.size = size

    def views(self) -> tuple[np.ndarray, np.ndarray]:
        """`normal` and `error`, `size` long."""
        return self.normal[: self.size], self.error[: self.size]


class ExactGaussianNoise:
    """`RN32(x + std * N)` for float32 vectors x, N an ideal Gaussian vector.

    One pair of uniforms per two coordinates: coordinate `p` takes the
    cosine of pair p and coordinate `pairs + p` its sine. Per pair, 64
    random bits give the radius uniform `W = 1 - V` (52 bits of V) and a
    sign, 64 more the angle uniform `A` (52 bits):
    `N = (+-r cos(alpha), r sin(alpha))` with `r = sqrt(-2 ln W)` and
    `alpha = pi (2A - 1) / 2`; the sign puts alpha in the left half-plane.
    The cosine and sine come from `t = tan(alpha / 2)` (numpy's float64
    `sin` and `cos` are 7x slower than `tan` here).

    The work is split in two: `draw()` makes everything that does not
    depend on x (a `HostDraw`: the float64 `std N` and a bound on its
    error), which can happen ahead of the step, in another thread;
    `round_exactly(draw, x)` adds x, rounds, and settles (`refine`) the few
    coordinates whose float32 the bound leaves open, in 0.4 ms for the MLP's
    270k (TensorFlow's float64 kernels took 3 ms for the same arithmetic in
    the graph). Draws and outputs rotate through `buffers` buffers.

    Args:
        size: Coordinates per call.
        std: Noise standard deviation (the float64 value is raised by 2^-50
            relative, so that rounding never lowers it).
        stream: The keystream source.
        buffers: How many draws to rotate through (the one in use, the one
            ready, the one being drawn).
        max_extra_bits: Random bits a uniform may gain in refinement.

    Attributes:
        refined: Coordinates recomputed in extended precision so far.
        failure_per_step: Probability, per call, that some sample needed more
            than `max_extra_bits` (the sampler then rounds its best interval).
    """

    def __init__(
        self,
        size: int,
        std: float,
        stream: SecureStream,
        buffers: int = 3,
        max_extra_bits: int = 960,
    ):
        if not (1e-100 < std < 1e100):
            raise ValueError(f"Expected std in (1e-100, 1e100). Received: std={std}")
        self.size = int(size)
        self.std = float(std) * (1.0 + 2.0**-50)
        self.max_extra_bits = int(max_extra_bits)
        self.rekey(stream)
        self.pairs = pairs = (self.size + 1) // 2
        self._draws = [HostDraw(self.size, pairs) for _ in range(buffers)]
        self._next = 0
        block = min(pairs, BLOCK)
        self._a, self._b, self._radius, self._error = (np.empty(block) for _ in range(4))
        block = min(self.size, 2 * BLOCK)
        self._v, self._e = np.empty(block), np.empty(block)
        self._high, self._flags = np.empty(block, np.float32), np.empty(block, bool)
        self._outputs = [np.empty(self.size, np.float32) for _ in range(buffers)]
        self._next_output = 0
        self.refined = 0
        self.failure_per_step = pairs * 2.0 ** -(52 + self.max_extra_bits)

    def rekey(self, stream: SecureStream) -> None:
        """Draws from `stream` from now on, keeping the buffers (a new run).

        Refinement reads its own fork of `stream`: draws may run in another thread,
        and a stream is not thread-safe.
        """
        self._stream = stream
        self._refine_stream = stream.fork("refine")

    # -- what does not depend on x ---------------------------------------------------------
    def draw(self) -> HostDraw:
        """The next step's `std N` in float64 and the bound on its error."""
        draw = self._draws[self._next]
        self._next = (self._next + 1) % len(self._draws)
        self._stream.fill(draw.words)
        for start in range(0, self.pairs, BLOCK):  # blocks that stay in the core's cache
            self._draw_block(draw, start, min(start + BLOCK, self.pairs))
        return draw

    def _draw_block(self, draw: HostDraw, start: int, stop: int) -> None:
        n, pairs, std = stop - start, self.pairs, self.std
        radius_words = draw.words[start:stop]
        angle_words = draw.words[pairs + start : pairs + stop]
        a, b, r, err = self._a[:n], self._b[:n], self._radius[:n], self._error[:n]
        cosine, sine = draw.normal[start:stop], draw.normal[pairs + start : pairs + stop]
        # Radius: W_hi = 1 - k 2^-52 = 2 - (1 + k 2^-52), exact; W in (W_hi - 2^-52, W_hi].
        np.subtract(2.0, _from_bits(radius_words, _ONE, a), out=a)
        np.log(a, out=r)
        np.multiply(r, -2.0 * std * std, out=r)
        np.sqrt(r, out=r)  # r = std sqrt(-2 ln W_hi)
        # |N - N_f| <= dr + r |d cos| with dr <= 2 dL / r, dL <= 2^-51 / (W_hi - 2^-52) (the
        # cell of W) + 2^-48 L (log's error), |d cos| <= 2^-46.7 (tan's error, the cell of A,
        # roundings): std (dr + r |d cos|) <= 2^-50 std^2 / ((W_hi - 2^-52) r) + 2^-45.8 r
        # (r here with std folded in). Used: twice the first term, 1.7x the second; plus
        # 2^-49 r for the rounding of x + std N and the margin (with 2^-49 max|x|, in the step).
        np.subtract(a, _ULP, out=a)
        np.multiply(a, r, out=a)
        with np.errstate(divide="ignore"):  # W_hi = 2^-52 or r = 0: inf, refined in the step
            np.divide(2.0**-49 * std * std, a, out=err)
        np.multiply(r, 2.0**-45 + MARGIN, out=a)
        np.add(err, a, out=err)
        # Angle: t = tan(pi (2A - 1) / 4) in [-1, 1): cos = (1 - t^2) / (1 + t^2) >= 0 and
        # sin = 2t / (1 + t^2) cover the right half-plane; a sign on the cosine, the rest.
        np.subtract(_from_bits(angle_words, _TWO, a), 3.0, out=a)  # 2A - 1, exact
        np.multiply(a, math.pi / 4.0, out=a)
        np.tan(a, out=a)
        np.multiply(a, a, out=b)
        np.subtract(1.0, b, out=cosine)
        np.add(1.0, b, out=b)
        np.divide(r, b, out=b)  # r / (1 + t^2)
        np.multiply(cosine, b, out=cosine)
        np.add(a, a, out=a)
        np.multiply(a, b, out=sine)
        sign = np.bitwise_and(radius_words, _SIGN, out=b.view(np.uint64))  # b is free again
        bits = cosine.view(np.uint64)
        np.bitwise_xor(bits, sign, out=bits)
        # The bound per coordinate, in float32: raised by 2^-20 so that its rounding never
        # lowers it, and at least float32's smallest normal, so that it never flushes to zero.
        np.multiply(err, 1.0 + 2.0**-20, out=err)
        np.maximum(err, 2.0**-126, out=err)
        np.copyto(draw.error[start:stop], err, casting="same_kind")
        np.copyto(draw.error[pairs + start : pairs + stop], err, casting="same_kind")

    # -- what does -----------------------------------------------------------------------------
    def round_exactly(self, draw: HostDraw, x: np.ndarray) -> np.ndarray:
        """`RN32(x + std N)` for `draw` and a float32 vector `x`. The output rotates through
        `buffers` arrays, like the draws."""
        x = np.asarray(x)
        if x.shape != (self.size,) or x.dtype != np.float32:
            raise ValueError(
                f"Expected a float32 vector of shape ({self.size},). "
                f"Received: shape={x.shape}, dtype={x.dtype}"
            )
        normal, error = draw.views()
        y = self._outputs[self._next_output]
        self._next_output = (self._next_output + 1) % len(self._outputs)
        margin = MARGIN * max_abs(x)
        undecided = []
        for start in range(0, self.size, 2 * BLOCK):
            stop = min(start + 2 * BLOCK, self.size)
            n = stop - start
            v, e, high, flags = self._v[:n], self._e[:n], self._high[:n], self._flags[:n]
            np.add(x[start:stop], normal[start:stop], out=v)
            np.add(error[start:stop], margin, out=e)
            # Where both ends' float32 agree, that is the output: the low end's, written at once.
            np.subtract(v, e, out=y[start:stop], casting="same_kind")
            np.add(v, e, out=high, casting="same_kind")
            found = np.flatnonzero(np.not_equal(y[start:stop], high, out=flags))
            if found.size:
                undecided.append(found + start)
        if undecided:
            coordinates = np.concatenate(undecided)
            y[coordinates] = self.refine(draw, coordinates, x[coordinates])
        return y

    def add(self, x: np.ndarray) -> np.ndarray:
        """`RN32(x + std * N)` with a fresh draw (numpy throughout)."""
        return self.round_exactly(self.draw(), x)

    def refine(self, draw: HostDraw, coordinates: np.ndarray, x: np.ndarray) -> np.ndarray:
        """RN32 of `x + std N` at `coordinates` (float32 values of x there), exactly: with 64
        more bits per uniform in long double (64-bit mantissa) for nearly all, then in
        mpmath interval arithmetic for what remains. Non-finite x gives x + std N as is."""
        coordinates = np.asarray(coordinates, dtype=np.int64)
        x = np.asarray(x, dtype=np.float32)
        out = (x.astype(np.float64) + draw.normal[coordinates]).astype(np.float32)
        finite = np.isfinite(x)  # NaN stays NaN
        coordinates, x_finite = coordinates[finite], x[finite]
        if not coordinates.size:
            return out
        self.refined += coordinates.size
        pair_of = coordinates % self.pairs
        pairs = np.unique(pair_of)
        extension = self._refine_stream.fill(np.empty(2 * pairs.size, dtype=np.uint64))
        row = np.searchsorted(pairs, pair_of)
        radius_words, angle_words = draw.words[pair_of], draw.words[self.pairs + pair_of]
        v_more, a_more = extension[0::2][row], extension[1::2][row]
        sine = coordinates >= self.pairs
        negative = (radius_words >> np.uint64(63)).astype(bool) & ~sine  # the cosine's sign
        values, settled = _extended_precision(
            x_finite, self.std, radius_words & _MANTISSA, v_more, angle_words & _MANTISSA,
            a_more, sine, negative,
        )  # fmt: skip
        for k in np.flatnonzero(~settled).tolist():
            v_bits = int(radius_words[k] & _MANTISSA) << 64 | int(v_more[k])
            a_bits = int(angle_words[k] & _MANTISSA) << 64 | int(a_more[k])
            values[k] = self._settle(
                float(x_finite[k]), v_bits, a_bits, bool(sine[k]), bool(negative[k])
            )
        out[finite] = values
        return out

    def _settle(self, x: float, v_bits: int, a_bits: int, sine: bool, negative: bool):
        """mpmath interval arithmetic, 64 more bits per uniform per round, until certain."""
        bits = 52 + 64
        while True:
            last = bits - 52 >= self.max_extra_bits
            value = _exact_float32(x, self.std, v_bits, a_bits, bits, sine, negative, last)
            if value is not None:
                return value
            more = self._refine_stream.fill(np.empty(2, dtype=np.uint64)).tolist()
            v_bits, a_bits, bits = v_bits << 64 | more[0], a_bits << 64 | more[1], bits + 64


def max_abs(x: np.ndarray) -> float:
    """max |x| over the finite values of a float array (0 for none)."""
    if not x.size:
        return 0.0
    top = max(-float(np.minimum.reduce(x)), float(np.maximum.reduce(x)), 0.0)
    if math.isfinite(top):
        return top
    finite = x[np.isfinite(x)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _exact_float32(x, std, v_bits, a_bits, bits, use_sine, negative, force):
    """RN32(x + std N) for the pair's uniforms known to `bits` bits, or None if not yet certain.

    Interval arithmetic (mpmath's `iv`) at `bits + 64` bits of precision:
    V in [v 2^-bits, (v + 1) 2^-bits), W = 1 - V, A likewise.
    """
    prec, saved = bits + 96, iv.prec
    with mp.workprec(prec):
        iv.prec = prec
        try:
            return _exact_float32_at(x, std, v_bits, a_bits, bits, use_sine, negative, force)
        finally:
            iv.prec = saved


def _exact_float32_at(x, std, v_bits, a_bits, bits, use_sine, negative, force):
    scale = mpf(2) ** -bits
    v = iv.mpf([mpf(v_bits) * scale, mpf(v_bits + 1) * scale])
    a = iv.mpf([mpf(a_bits) * scale, mpf(a_bits + 1) * scale])
    w = 1 - v
    if w.a <= 0:  # V's cell reaches 1: the radius is unbounded so far
        if not force:
            return None
        w = iv.mpf([scale / 2, w.b])
    radius = iv.sqrt(-2 * iv.log(w))
    angle = iv.pi / 2 * (2 * a - 1)
    normal = radius * (iv.sin(angle) if use_sine else iv.cos(angle))
    value = iv.mpf(x) + iv.mpf(std) * (-normal if negative else normal)
    low, high = (_round_float32(end) for end in value._mpi_)
    if low == high or force:
        return low
    return None


_LD = np.longdouble
_PI_4 = _LD("0.785398163397448309615660845819875721")  # pi / 4 to long double precision
#: Relative error assumed for long double `log` and `tan` (glibc's logl and tanl: 1-2 ulp).
EXTENDED_FUNCTION_ERROR = 2.0**-58


def _extended_precision(x, std, v_high, v_low, a_high, a_low, sine, negative):
    """RN32(x + std N) in long double from 116-bit uniforms, and which are certain.

    The same bound as the float64 pass, with long double's 64-bit mantissa:
    `|N - N_ld| <= (2^-113 / (W_top - 2^-116) + 2^-61) / r + 2^-55 r` and a
    margin of 2^-60 |v| (W's cell of width 2^-116, and its rounding to 64
    bits, which the float64 pass does not have; log and tan within
    `EXTENDED_FUNCTION_ERROR`; the cell of A and the roundings).
    """
    two64 = _LD(2.0**64)
    # W_top = 1 - (v_high 2^64 + v_low) 2^-116 = ((2^52 - 1 - v_high) + (2^64 - v_low) 2^-64) 2^-52
    w = (_LD(2.0**52 - 1) - v_high.astype(_LD) + (two64 - v_low.astype(_LD)) / two64) * _LD(_ULP)
    r = np.sqrt(-2 * np.log(w))
    t = np.tan(((a_high.astype(_LD) + a_low.astype(_LD) / two64) * _LD(2.0**-51) - 1) * _PI_4)
    scale = r / (1 + t * t)
    normal = np.where(sine, 2 * t * scale, (1 - t * t) * scale)
    normal = np.where(negative, -normal, normal)
    with np.errstate(divide="ignore"):
        error = (_LD(2.0**-113) / (w - _LD(2.0**-116)) + _LD(2.0**-61)) / r + _LD(2.0**-55) * r
    v = x.astype(_LD) + _LD(std) * normal
    e = _LD(std) * error + np.abs(v) * _LD(2.0**-60)
    low, high = (v - e).astype(np.float32), (v + e).astype(np.float32)
    return v.astype(np.float32), low == high


def _round_float32(raw: tuple) -> np.float32:
    """The float32 nearest (ties to even) to an mpmath raw value `(sign, man, exp, bc)`."""
    sign, man, exp, _ = raw
    if man == 0:
        return np.float32(0.0)
    top = exp + man.bit_length() - 1  # floor(log2 |value|)
    quantum = max(top - 23, -149)
    if exp < quantum:
        shift = quantum - exp
        rounded, rest = man >> shift, man & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rest > half or (rest == half and rounded & 1):
            rounded += 1
        man, exp = rounded, quantum
    with np.errstate(over="ignore"):
        value = np.float32(math.ldexp(man, exp) if exp < 1000 else math.inf)
    return -value if sign else value


# -- the device route ------------------------------------------------------------------------


class NoiseWords:
    """Random 64-bit words for `gaussian_from_words`: 3 per pair of samples, per step.

    Args:
        size: Samples per step.
        stream: The keystream source.
        buffers: Output arrays to rotate through; 0 for a fresh array at every
            call (when a consumer may keep one for an unknown time, as tf.data's
            prefetching does).

    Attributes:
        failure_per_step: Probability, per step, that some radius uniform fell
            in its last cell of width 2^-104 (a sample beyond 12.0 sigma then
            comes out at about 12.0 sigma): `pairs * 2^-104`.
    """

    def __init__(self, size: int, stream: SecureStream, buffers: int = 2):
        self.size = int(size)
        self.pairs = (self.size + 1) // 2
        self._stream = stream
        self._outputs = [
            np.empty(DEVICE_WORDS_PER_PAIR * self.pairs, dtype=np.uint64) for _ in range(buffers)
        ]
        self._next = 0
        self.failure_per_step = self.pairs * 2.0**-104

    def take(self) -> np.ndarray:
        """The next step's words."""
        if not self._outputs:
            return self._stream.fill(np.empty(DEVICE_WORDS_PER_PAIR * self.pairs, np.uint64))
        out = self._outputs[self._next]
        self._next = (self._next + 1) % len(self._outputs)
        return self._stream.fill(out)


def gaussian_from_words(words: Any, size: int, ops: Any) -> Any:
    """`size` float64 N(0, 1) samples from `NoiseWords` words, in any array library.

    Args:
        words: `3 * pairs` uint64 (or int64) words: radius high, radius low
            and angle word per pair, each block of `pairs` contiguous.
        size: Samples wanted (<= 2 * pairs).
        ops: The array namespace: `NUMPY_WORD_OPS`, or the backend's with the
            same functions (`bitwise_and`, `bitwise_or`, `bitwise_xor`,
            `left_shift`, `as_float64`, `as_words`, `log`, `sqrt`, `tan`,
            `concat`, `constant`).

    The radius uniform is `W = 1 - V` with 104 bits of V (52 from each
    radius word), the angle `A` has 52 bits; signs come from bits 63 and 62
    of the high radius word.
    """
    pairs = (size + 1) // 2
    high, low, angle = words[:pairs], words[pairs : 2 * pairs], words[2 * pairs : 3 * pairs]
    mantissa, one, sign = ops.constant(_MANTISSA), ops.constant(_ONE), ops.constant(_SIGN)

    def unit(w):  # 1 + (low 52 bits) 2^-52, in [1, 2)
        return ops.as_float64(ops.bitwise_or(ops.bitwise_and(w, mantissa), one))

    # W = (1 - k_high 2^-52) - 2^-52 + (1 - k_low 2^-52) 2^-52, in (0, 1].
    w = (2.0 - unit(high) - _ULP) + (2.0 - unit(low)) * _ULP
    radius = ops.sqrt(-2.0 * ops.log(w))
    t = ops.tan((unit(angle) - 1.0 + 2.0**-53) * (math.pi / 4.0))
    scale = radius / (1.0 + t * t)
    cosine = (1.0 - t * t) * scale
    sine = 2.0 * t * scale

    def signed(values, word):
        flip = ops.bitwise_and(word, sign)
        return ops.as_float64(ops.bitwise_xor(ops.as_words(values), flip))

    normal = ops.concat([signed(cosine, high), signed(sine, ops.left_shift(high, 1))])
    return normal[:size]


class _NumpyWordOps:
    """`gaussian_from_words` on numpy (the reference for the backends' versions)."""

    bitwise_and = staticmethod(np.bitwise_and)
    bitwise_or = staticmethod(np.bitwise_or)
    bitwise_xor = staticmethod(np.bitwise_xor)
    log = staticmethod(np.log)
    sqrt = staticmethod(np.sqrt)
    tan = staticmethod(np.tan)

    @staticmethod
    def left_shift(x, n):
        return np.left_shift(x, np.uint64(n))

    @staticmethod
    def as_float64(x):
        return np.asarray(x).view(np.float64)

    @staticmethod
    def as_words(x):
        return np.asarray(x).view(np.uint64)

    @staticmethod
    def concat(parts):
        return np.concatenate(parts)

    @staticmethod
    def constant(value):
        return np.uint64(value)


NUMPY_WORD_OPS = _NumpyWordOps


class HostNoise:
    """Each step's host draw (noised vectors or device words), optionally one step ahead.

    Args:
        draw: The function that makes one step's draw (a bound method of
            `ExactGaussianNoise` or `NoiseWords`).
        ahead: Draw the next step's in a background thread (only for draws
            that take no input: the device route's words). It pays when the
            host is idle during the step (a model on a GPU); on CPU the
            thread competes with the step's own threads.
    """

    def __init__(self, draw, ahead: bool = False):
        self._draw = draw
        self._executor = None
        self._next = None
        self._closed = False
        if ahead:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="privkeras-dp-noise"
            )
            self._next = self._executor.submit(draw)

    def take(self, *args) -> np.ndarray:
        """This step's draw (waiting for it if drawn ahead and not ready)."""
        if self._closed:
            raise RuntimeError("HostNoise.take() after close().")
        if self._executor is None:
            return self._draw(*args)
        sample = self._next.result()
        self._next = self._executor.submit(self._draw)
        return sample

    def close(self) -> None:
        """Stops the background thread; a drawn but untaken draw is dropped."""
        self._closed = True
        self._next = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
