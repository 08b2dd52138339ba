"""SecureStream: deterministic per seed, independent across seeds and forks,
statistically sane, and identical on every tensor library after `from_numpy`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
from privkeras.core.random import SecureStream


def test_same_seed_same_stream_across_calls_and_kinds():
    a, b = SecureStream(seed=7), SecureStream(seed=7)
    for draw in (
        lambda s: s.ring((3, 4)),
        lambda s: s.bits(13),
        lambda s: s.uniform(5),
        lambda s: s.gaussian((2, 3), std=2.0),
        lambda s: s.random_bytes(17),
        lambda s: s.ring(3_000_000),  # crosses the keystream's chunking
    ):
        x, y = draw(a), draw(b)
        assert (x == y) if isinstance(x, bytes) else np.array_equal(x, y)
    assert a.seeded and not SecureStream().seeded


def test_calls_consume_fresh_keystream_and_chunking_does_not_change_it():
    whole = SecureStream(seed="s").ring(300)
    parts = SecureStream(seed="s")
    split = np.concatenate([parts.ring(100), parts.ring(1), parts.ring(199)])
    np.testing.assert_array_equal(whole, split)
    assert not np.array_equal(whole[:100], whole[100:200])
    raw = SecureStream(seed="s").random_bytes(300 * 8)
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<i8"), whole)


def test_different_seeds_and_unseeded_streams_differ():
    draws = [
        SecureStream(seed=1).ring(64),
        SecureStream(seed=2).ring(64),
        SecureStream(seed="1").ring(64),
        SecureStream(seed=-1).ring(64),
        SecureStream().ring(64),
        SecureStream().ring(64),
    ]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not np.array_equal(draws[i], draws[j]), (i, j)


def test_forks_are_deterministic_independent_and_do_not_advance_the_parent():
    parent = SecureStream(seed=3)
    first, again, other = parent.fork("party-0"), parent.fork("party-0"), parent.fork("party-1")
    np.testing.assert_array_equal(first.ring(32), again.ring(32))
    assert not np.array_equal(SecureStream(seed=3).fork("party-0").ring(32), other.ring(32))
    np.testing.assert_array_equal(parent.ring(8), SecureStream(seed=3).ring(8))
    assert not np.array_equal(
        SecureStream(seed=3).fork("party-0").ring(8), SecureStream(seed=3).ring(8)
    )
    assert not np.array_equal(
        SecureStream(seed=4).fork("party-0").ring(8), SecureStream(seed=3).fork("party-0").ring(8)
    )
    assert first.seeded and not SecureStream().fork("x").seeded
    np.testing.assert_array_equal(parent.fork(b"label").ring(4), parent.fork("label").ring(4))


def test_ring_elements_are_uniform_over_bytes_and_bits():
    values = SecureStream(seed=11).ring(1 << 16)
    assert values.dtype == np.int64
    top = (values.view(np.uint64) >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    expected = values.size / 256
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    assert chi_square < 400, chi_square  # 255 degrees of freedom: mean 255, sd ~23
    low = np.bincount((values & 0xFF).astype(np.int64), minlength=256)
    assert float(np.sum((low - expected) ** 2 / expected)) < 400
    bits = (values.view(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.02), ones  # 6 sd for 65536 samples per bit
    assert (values < 0).mean() == pytest.approx(0.5, abs=0.02)


def test_bits_are_balanced_zeros_and_ones():
    bits = SecureStream(seed=12).bits((100, 1000))
    assert bits.dtype == np.int64 and bits.shape == (100, 1000)
    assert set(np.unique(bits).tolist()) == {0, 1}
    assert bits.mean() == pytest.approx(0.5, abs=0.01)
    assert SecureStream(seed=12).bits(0).shape == (0,)


def test_uniform_and_gaussian_moments():
    u = SecureStream(seed=13).uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert u.mean() == pytest.approx(0.5, abs=0.005)
    g = SecureStream(seed=14).gaussian((100_000,), std=2.5)
    assert g.shape == (100_000,) and np.all(np.isfinite(g))
    assert g.mean() == pytest.approx(0.0, abs=0.05)
    assert g.std() == pytest.approx(2.5, rel=0.02)
    assert np.mean(np.abs(g) < 2.5) == pytest.approx(0.6827, abs=0.01)
    odd = SecureStream(seed=14).gaussian(7)
    assert odd.shape == (7,)
    assert np.all(SecureStream(seed=1).gaussian(4, std=0.0) == 0.0)


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_same_seed_gives_identical_tensors_in_every_library(name):
    k = get_kernels(name)
    reference = SecureStream(seed=21).ring((4, 5))
    tensor = k.from_numpy(SecureStream(seed=21).ring((4, 5)))
    np.testing.assert_array_equal(k.to_numpy(tensor), reference)
    assert k.to_numpy(tensor).dtype == np.int64


def test_bad_arguments_raise():
    stream = SecureStream(seed=1)
    with pytest.raises(ValueError, match="Expected std >= 0"):
        stream.gaussian(3, std=-1.0)
    with pytest.raises(ValueError, match="Expected std >= 0"):
        stream.gaussian(3, std=float("nan"))
    with pytest.raises(ValueError, match="Expected a shape of non-negative sizes"):
        stream.ring((2, -1))
    with pytest.raises(ValueError, match="Expected n >= 0"):
        stream.random_bytes(-1)
    with pytest.raises(TypeError, match="Expected a seed of type int, str or bytes"):
        SecureStream(seed=1.5)


def test_fill_writes_the_same_keystream_as_random_bytes_in_place():
    for n in (0, 1, 15, 16, 17, 1000, (1 << 20) + 21):  # around update_into's spare bytes
        out = np.full(n, 7, dtype=np.uint8)
        assert SecureStream(seed=5).fill(out) is out
        assert out.tobytes() == SecureStream(seed=5).random_bytes(n)
    words = SecureStream(seed=6).fill(np.empty(9, dtype=np.uint64))
    np.testing.assert_array_equal(
        words.view(np.uint8), np.frombuffer(SecureStream(seed=6).random_bytes(72), dtype=np.uint8)
    )


class _OnesStream(SecureStream):
    """Keystream of 0xFF bytes: uniforms of 1 - 2^-53, the radius uniform's extreme."""

    def _keystream(self, n):
        return np.full(n, 0xFF, dtype=np.uint8)


def test_gaussian_uniforms_have_53_bits_and_the_tails_are_complete():
    u = SecureStream(seed=15).uniform(100_000)
    scaled = u * 2.0**53
    assert np.array_equal(scaled, np.floor(scaled))  # multiples of 2^-53
    assert np.mean(scaled % 2 == 1) == pytest.approx(0.5, abs=0.01)  # the 53rd bit is used
    # A 53-bit uniform alone stops the radius at sqrt(2 ln 2^53) = 8.57 sigma (the old
    # sampler's maximum); the radius uniform is refined below 2^-20, down to 2^-1060.
    extreme = _OnesStream(seed=0).gaussian(2)
    assert np.abs(extreme).max() == pytest.approx(math.sqrt(2 * 1060 * math.log(2)), rel=1e-6)
    assert np.all(np.isfinite(extreme))
