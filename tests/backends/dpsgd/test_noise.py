"""DP-SGD noise: the exactly rounded Gaussian mechanism, its tails, the device route's words.

The old sampler (float32 Box-Muller on a 32-bit radius uniform) never went
beyond 6.66 sigma, and added float32 noise in float32; these tests fail on it.
"""

import math

import numpy as np
import pytest
from mpmath import iv, mp, mpf
from scipy import stats

from privkeras.backends.dpsgd import noise
from privkeras.backends.dpsgd.noise import (
    DEVICE_WORDS_PER_PAIR,
    ExactGaussianNoise,
    HostNoise,
    NoiseWords,
    gaussian_from_words,
)
from privkeras.core.random import SecureStream


class ConstantStream(SecureStream):
    """A 'keystream' of one repeated byte: the sampler's extreme inputs."""

    def __init__(self, byte: int):
        super().__init__(seed=0)
        self.byte = byte

    def fill(self, out):
        out.view(np.uint8)[...] = self.byte
        return out

    def fork(self, label):
        return ConstantStream(self.byte)


def _oracle(x: float, std: float, v_bits: int, a_bits: int, bits: int, sine: bool, sign: int):
    """RN32(x + std N) by mpmath interval arithmetic at 4x the precision, from the same bits."""
    mp.prec = iv.prec = 4 * bits
    scale = mpf(2) ** -bits
    v = iv.mpf([mpf(v_bits) * scale, mpf(v_bits + 1) * scale])
    a = iv.mpf([mpf(a_bits) * scale, mpf(a_bits + 1) * scale])
    r = iv.sqrt(-2 * iv.log(1 - v))
    angle = iv.pi / 2 * (2 * a - 1)
    n = r * (iv.sin(angle) if sine else iv.cos(angle))
    value = iv.mpf(x) + iv.mpf(std) * (-n if sign else n)
    low, high = (noise._round_float32(end) for end in value._mpi_)
    mp.prec = iv.prec = 53
    return low if low == high else None


def test_every_coordinate_is_the_correctly_rounded_ideal_mechanism():
    """Coordinates settled by the float64 pass agree with the 52-bit oracle; near-tie
    coordinates (x + std N within 1e-16 relative of a float32 midpoint) are refined and
    agree with the oracle on the bits the refinement drew."""
    size, std = 400, 0.37
    x = np.random.default_rng(0).normal(scale=0.5, size=size).astype(np.float32)
    sampler = ExactGaussianNoise(size, std, SecureStream(seed=3))
    draw = sampler.draw()
    y = sampler.round_exactly(draw, x)
    words, pairs, mask = draw.words, sampler.pairs, (1 << 52) - 1
    for i in range(size):
        p = i % pairs
        radius_word, angle_word = int(words[p]), int(words[pairs + p])
        sign = radius_word >> 63 & 1 if i < pairs else 0
        want = _oracle(
            float(x[i]), sampler.std, radius_word & mask, angle_word & mask, 52, i >= pairs, sign
        )
        assert want is None or y[i] == want, i
    assert sampler.refined == 0


def test_near_ties_are_refined_with_more_random_bits():
    # Put std * N of coordinate 0 on the float32 midpoint between 1 and 1 + 2^-23.
    probe = ExactGaussianNoise(2, 1.0, SecureStream(seed=8))
    midpoint = 1.0 + 2.0**-24
    std = midpoint / (probe.draw().normal[0] / probe.std * (1.0 + 2.0**-50))
    sampler = ExactGaussianNoise(2, abs(std), SecureStream(seed=8))
    y = sampler.add(np.zeros(2, np.float32)).copy()
    assert sampler.refined >= 1
    # Replay the streams: 2 words per pair, then, from the refinement's fork, 2 words
    # (radius, angle) per refinement round.
    first = SecureStream(seed=8).fill(np.empty(2, np.uint64))
    more = SecureStream(seed=8).fork("refine").fill(np.empty(2, np.uint64))
    mask = (1 << 52) - 1
    v_bits = (int(first[0]) & mask) << 64 | int(more[0])
    a_bits = (int(first[1]) & mask) << 64 | int(more[1])
    sign = int(first[0]) >> 63 & 1
    want = _oracle(0.0, sampler.std, v_bits, a_bits, 116, False, sign)
    assert want is not None and y[0] == want
    assert abs(float(y[0])) in (1.0, float(np.float32(1.0 + 2.0**-23)))


def test_output_is_gaussian_with_the_stated_std():
    sampler = ExactGaussianNoise(200_001, 2.5, SecureStream(seed=11))  # odd size on purpose
    zeros = np.zeros(200_001, np.float32)
    z = np.concatenate([sampler.add(zeros).astype(np.float64) for _ in range(5)]) / 2.5
    assert abs(z.mean()) < 5 / math.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, abs=0.003)
    assert stats.kstest(z, "norm").pvalue > 1e-3  # a fixed seed: deterministic
    assert abs(stats.kurtosis(z)) < 0.03 and abs(stats.skew(z)) < 0.015
    pairs = (200_001 + 1) // 2  # the two halves share radii, never angles
    first = sampler.add(zeros).astype(np.float64)
    assert abs(np.corrcoef(first[: pairs - 1] ** 2, first[pairs : 2 * pairs - 1] ** 2)[0, 1]) < 0.3


@pytest.mark.parametrize("byte", [0x00, 0xFF])
def test_tails_are_complete(byte):
    """The extreme keystreams: the old sampler's maximum was 6.66 sigma (all zeros); the radius
    uniform now gains bits until the float32 is certain, so samples reach 37.5 sigma."""
    sampler = ExactGaussianNoise(2, 1.0, ConstantStream(byte))
    y = sampler.add(np.zeros(2, np.float32))
    if byte == 0xFF:  # V = 0.111...: W = 1 - V is as small as the bits go
        assert np.abs(y).max() >= 37.4  # sqrt(2 ln 2^1012) = 37.46
        assert sampler.failure_per_step == 2.0**-1012
    else:  # W = 1: radius 0
        assert np.all(y == 0.0)


def test_device_route_words_reach_twelve_sigma_and_report_their_tail():
    words = NoiseWords(2, ConstantStream(0xFF))
    normal = gaussian_from_words(words.take(), 2, noise.NUMPY_WORD_OPS)
    assert np.abs(normal).max() == pytest.approx(math.sqrt(2 * 104 * math.log(2)), rel=1e-9)
    assert words.failure_per_step == 2.0**-104


def test_device_route_is_gaussian():
    size = 200_001
    words = NoiseWords(size, SecureStream(seed=4)).take()
    assert words.shape == (DEVICE_WORDS_PER_PAIR * ((size + 1) // 2),)
    z = gaussian_from_words(words, size, noise.NUMPY_WORD_OPS)
    assert z.shape == (size,) and z.dtype == np.float64
    assert stats.kstest(z, "norm").pvalue > 1e-3  # a fixed seed: deterministic
    assert z.std() == pytest.approx(1.0, abs=4 / math.sqrt(2 * size))
    assert abs(z.mean()) < 4 / math.sqrt(size)


def test_numpy_log_and_tan_are_within_the_assumed_error():
    """The float64 pass's error bound assumes 2^-48 relative (16-32 ulp); measure the worst of
    20,000 inputs of each function's domain against mpmath (numpy states 4 ulp)."""
    rng = np.random.default_rng(5)
    w = 2.0 - (1.0 + rng.integers(0, 2**52, 10_000) * 2.0**-52)  # W_hi values
    w = np.concatenate([w, 2.0 ** -rng.uniform(0, 52, 10_000)])
    t = rng.uniform(0, math.pi / 4, 20_000)
    mp.prec = 200
    worst = 0.0
    for fn, mp_fn, values in ((np.log, mp.log, w), (np.tan, mp.tan, t)):
        got = fn(values)
        for value, result in zip(values.tolist(), got.tolist()):
            exact = mp_fn(mpf(value))
            if exact != 0:
                worst = max(worst, float(abs((mpf(result) - exact) / exact)))
    mp.prec = 53
    assert worst <= 2.0**-52 and 16 * worst <= noise.FUNCTION_ERROR  # measured: 0.5 ulp


def test_draws_rotate_and_do_not_depend_on_x():
    sampler = ExactGaussianNoise(8, 1.0, SecureStream(seed=1), buffers=2)
    a = sampler.draw()
    a_normal = a.normal.copy()
    b = sampler.draw()
    assert not np.shares_memory(a.normal, b.normal) and np.array_equal(a.normal, a_normal)
    assert sampler.draw() is a and not np.array_equal(a.normal, a_normal)  # a's buffers again
    zeros = np.zeros(8, np.float32)
    np.testing.assert_array_equal(sampler.round_exactly(b, zeros), b.normal.astype(np.float32))
    assert np.all(b.error > 0) and b.error.dtype == np.float32
    with pytest.raises(ValueError, match=r"float32 vector of shape \(8,\)"):
        sampler.add(np.zeros(8))


def test_host_noise_draws_in_order_and_is_keyed_from_os_urandom():
    np.random.seed(5)  # must not make the noise predictable
    draws = []
    for ahead in (False, True):  # drawn in the step, or one step ahead
        words = NoiseWords(10, SecureStream(), buffers=3)
        host = HostNoise(words.take, ahead=ahead)
        draws.append([host.take().copy() for _ in range(3)])
        host.close()
        with pytest.raises(RuntimeError, match="after close"):
            host.take()
    assert not np.array_equal(draws[0][0], draws[1][0])
    assert not np.array_equal(draws[0][0], draws[0][1])
    replay = SecureStream(seed=9)
    host = HostNoise(NoiseWords(10, SecureStream(seed=9), buffers=3).take, ahead=True)
    for _ in range(3):  # drawn ahead, each taken once, in order
        want = replay.fill(np.empty(DEVICE_WORDS_PER_PAIR * 5, np.uint64))
        np.testing.assert_array_equal(host.take(), want)
    host.close()
