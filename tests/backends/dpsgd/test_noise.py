"""The host Gaussian sampler against the normal distribution; prefetching order."""

import numpy as np
import pytest
from scipy import stats

from privkeras.backends.dpsgd.noise import GaussianSampler, HostNoise
from privkeras.core.random import SecureStream


def test_samples_are_normal_with_the_stated_std():
    sampler = GaussianSampler(100_001, 2.5, SecureStream(seed=11))  # odd size on purpose
    samples = np.concatenate([sampler.sample().copy() for _ in range(10)])
    assert samples.shape == (1_000_010,) and samples.dtype == np.float32
    z = samples / 2.5
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, abs=0.003)
    assert stats.kstest(z, "norm").pvalue > 1e-3  # a fixed seed: deterministic
    assert abs(stats.kurtosis(z)) < 0.02 and abs(stats.skew(z)) < 0.01
    pairs = (100_001 + 1) // 2  # the two halves share radii, never angles
    first = sampler.sample()
    assert abs(np.corrcoef(first[: pairs - 1], first[pairs : 2 * pairs - 1])[0, 1]) < 0.02


def test_buffers_rotate():
    sampler = GaussianSampler(8, 1.0, SecureStream(seed=1), buffers=2)
    a = sampler.sample()
    a_copy = a.copy()
    b = sampler.sample()
    assert not np.shares_memory(a, b) and np.array_equal(a, a_copy)
    sampler.sample()  # reuses a's buffer
    assert not np.array_equal(a, a_copy)


def test_host_noise_is_keyed_from_os_urandom_not_the_numpy_seed():
    draws = []
    for ahead in (False, True):  # drawn in the step, or one step ahead
        np.random.seed(5)  # must not make the noise predictable
        noise = HostNoise(10, 1.0, ahead=ahead)
        assert noise._sampler._stream.seeded is False
        draws.append([noise.take().copy() for _ in range(4)])
        noise.close()
        with pytest.raises(RuntimeError, match="after close"):
            noise.take()
    assert not np.array_equal(draws[0][0], draws[1][0])
    assert not np.array_equal(draws[0][0], draws[0][1])
