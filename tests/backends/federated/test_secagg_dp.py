"""Distributed DP: exact discrete Gaussian sampling, the noise in the sum, epsilon.

The sampler is checked against the exact probability mass functions
(chi-square, fixed seeds so outcomes are deterministic); the summed noise of a
round against the standard deviation it is calibrated to; epsilon against
dp-accounting's Gaussian mechanism, which the distributed discrete Gaussian
matches when its noise is many ring steps wide.
"""

import dataclasses
import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from privkeras.backends.federated.secagg import (
    DiscreteGaussian,
    SecAggConfig,
    distributed_dp_epsilon,
    epsilon,
    round_rdp,
    simulate_round,
)
from privkeras.backends.federated.secagg.discrete_gaussian import (
    _bernoulli_exp_neg_big,
    bernoulli_exp_neg,
    discrete_laplace,
    uniform_integers,
)
from privkeras.core.random import SecureStream
from privkeras.errors import PrivacyPolicyError


def _chi_square_against(samples, support, pmf):
    """p-value of samples against `pmf` on the integers `support` (a range wide enough
    to hold all but a negligible mass). The tails are pooled into the end bins until
    every bin expects at least 5 samples, as the chi-square approximation needs."""
    expected = pmf / pmf.sum() * len(samples)
    cumulative = np.cumsum(expected)
    low = int(np.searchsorted(cumulative, 5.0))  # first bin: everything up to here
    high = int(np.searchsorted(cumulative, len(samples) - 5.0))  # last bin: from here on
    edges = support[low : high + 1]
    observed = np.bincount(np.clip(samples, edges[0], edges[-1]) - edges[0], minlength=len(edges))
    pooled = expected[low : high + 1].copy()
    pooled[0] += expected[:low].sum()
    pooled[-1] += expected[high + 1 :].sum()
    return stats.chisquare(observed, pooled).pvalue


def test_uniform_integers_are_uniform_below_any_bound():
    draws = uniform_integers(np.full(60_000, 3), 60_000, SecureStream(seed=1))
    assert set(np.unique(draws)) == {0, 1, 2}
    assert stats.chisquare(np.bincount(draws)).pvalue > 1e-4
    mixed = uniform_integers(np.array([1, 2, 5, 1 << 40] * 1000), 4000, SecureStream(seed=2))
    assert np.all(mixed[0::4] == 0) and np.all(mixed < np.array([1, 2, 5, 1 << 40] * 1000))


@pytest.mark.parametrize("num, den", [(0, 1), (1, 3), (1, 1), (5, 2), (7, 1), (123, 50)])
def test_bernoulli_exp_neg_has_probability_exp_minus_gamma(num, den):
    n = 100_000
    hits = bernoulli_exp_neg(np.full(n, num), np.full(n, den), SecureStream(seed=num * 7 + den))
    p = math.exp(-num / den)
    assert abs(hits.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_the_big_integer_path_of_bernoulli_exp_neg_is_exact_too():
    stream = SecureStream(seed=3)
    den = (1 << 70) + 1
    num = (5 * den) // 2  # gamma = 2.5, with integers past int64
    hits = np.mean([_bernoulli_exp_neg_big(num, den, stream) for _ in range(10_000)])
    p = math.exp(-num / den)
    assert abs(hits - p) <= 5 * math.sqrt(p * (1 - p) / 10_000)


def test_discrete_laplace_matches_its_pmf():
    t = 3
    samples = discrete_laplace(t, 100_000, SecureStream(seed=4))
    support = np.arange(-200, 201)
    pmf = np.exp(-np.abs(support) / t)
    assert _chi_square_against(samples, support, pmf) > 1e-4


@pytest.mark.parametrize("t, m", [(1, 1), (3, 2), (11, 10), (40, 45)])
def test_discrete_gaussian_matches_its_pmf(t, m):
    """Exact sampler: chi-square against N_Z(0, t m) on 100,000 samples."""
    dist = DiscreteGaussian.from_parameters(t, m)
    samples = dist.sample(100_000, SecureStream(seed=t * 100 + m))
    variance = dist.variance
    width = int(20 * math.sqrt(variance)) + 2
    support = np.arange(-width, width + 1)
    pmf = np.exp(-(support.astype(float) ** 2) / (2 * variance))
    assert _chi_square_against(samples, support, pmf) > 1e-4
    assert samples.mean() == pytest.approx(0, abs=5 * math.sqrt(variance / 100_000))


def test_large_discrete_gaussian_moments():
    dist = DiscreteGaussian(3.0e6)
    assert dist.variance >= 9.0e12 and dist.std < 3.0e6 + 1
    samples = dist.sample(200_000, SecureStream(seed=5)).astype(np.float64)
    assert samples.std() == pytest.approx(dist.std, rel=0.01)
    assert abs(samples.mean()) < 5 * dist.std / math.sqrt(len(samples))
    assert abs(stats.kurtosis(samples)) < 0.05  # Gaussian: excess kurtosis 0
    assert stats.kstest(samples / dist.std, "norm").pvalue > 1e-4


def test_discrete_gaussian_variance_is_at_least_what_was_asked():
    for sigma in (0.4, 1.0, 2.5, 7.3, 63.9, 64.0, 1234.5):
        dist = DiscreteGaussian(sigma)
        assert sigma**2 <= dist.variance <= sigma**2 + 2 * sigma + 1
    with pytest.raises(ValueError, match="sigma"):
        DiscreteGaussian(0)


DP = SecAggConfig(clip_norm=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("dropped", [[], ["o0", "o4", "o7"]])
def test_the_sum_carries_the_noise_calibrated_to_the_minimum_survivors(dropped):
    """Each owner adds its share; the coordinator adds none. With the 7 = min_survivors
    owners, the sum has noise std z * clip_norm; with all 10, sqrt(10/7) times that."""
    d = 4000
    updates = {f"o{i}": np.zeros(d) for i in range(10)}
    result = simulate_round(updates, DP, drop={"masked_input": dropped}, seed=6).result
    survivors = len(result.survivors)
    assert result.params.min_survivors == 7
    expected_std = 1.0 * math.sqrt(survivors / 7)
    assert result.total.std() == pytest.approx(expected_std, rel=0.05)
    assert abs(result.total.mean()) < 5 * expected_std / math.sqrt(d)


def test_each_owner_clips_its_update_before_the_noise():
    d = 2000
    big = np.zeros(d)
    big[:4] = [30.0, 40.0, 0, 0]  # norm 50, clipped to norm 1: [0.6, 0.8]
    updates = {f"o{i}": big for i in range(10)}
    result = simulate_round(updates, SecAggConfig(clip_norm=1.0, noise_multiplier=0.05)).result
    noise_std = 0.05 * math.sqrt(10 / 7)
    np.testing.assert_allclose(result.total[:2], [6.0, 8.0], atol=6 * noise_std)
    assert result.total[4:].std() == pytest.approx(noise_std, rel=0.1)


def test_the_ring_has_room_for_the_data_and_the_noise_tail():
    for n, d, z in [(2, 10, 0.1), (10, 4810, 1.0), (1000, 10**6, 3.0)]:
        params = SecAggConfig(clip_norm=2.0, noise_multiplier=z).resolve(n, d)
        sigma = math.sqrt(params.noise_t * params.noise_m)
        tail = math.sqrt(2 * math.log(2 * d / params.config.wrap_probability))
        worst = n * (2.0 / params.granularity + 1) + tail * math.sqrt(n) * sigma
        assert worst <= 2**31 - 1
        # and the noise itself is the calibrated fraction of z * clip_norm per owner
        assert sigma * params.granularity * math.sqrt(params.min_survivors) >= z * 2.0


def test_epsilon_matches_the_gaussian_mechanism_without_sampling():
    for z, rounds in [(0.8, 1), (1.0, 10), (2.0, 100)]:
        ours = distributed_dp_epsilon(
            noise_multiplier=z,
            clip_norm=1.0,
            vector_length=4810,
            num_owners=10,
            rounds=rounds,
            delta=1e-5,
        )
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
        gaussian = accountant.get_epsilon(1e-5)
        assert ours == pytest.approx(gaussian, rel=1e-3)


def test_epsilon_with_owner_sampling_is_amplified_and_above_the_tight_gaussian_bound():
    params = DP.resolve(100, 4810)
    sampled = epsilon(params, rounds=50, delta=1e-5, sampling_rate=0.1)
    full = epsilon(params, rounds=50, delta=1e-5)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 50
    )
    tight = accountant.get_epsilon(1e-5)
    assert tight <= sampled < full
    assert sampled < 1.5 * tight  # Zhu-Wang's general bound is looser, not wild


def test_epsilon_grows_with_rounds_and_with_fewer_noise_owners():
    params = DP.resolve(10, 100)
    assert epsilon(params, rounds=0, delta=1e-5) == 0.0
    one, ten = (epsilon(params, rounds=r, delta=1e-5) for r in (1, 10))
    assert one < ten
    assert epsilon(params, rounds=10, delta=1e-5, noise_owners=4) > ten
    rdp = round_rdp(params, [2.0, 4.0])
    assert rdp[1] == pytest.approx(2 * rdp[0])  # zCDP: linear in the order


def test_small_noise_pays_for_the_sum_of_discrete_gaussians_not_being_one():
    """With only a few ring steps of noise, the tau term of Kairouz et al.'s Theorem 1
    makes epsilon larger than the Gaussian's; the codec avoids that regime."""
    base = DP.resolve(10, 1000)
    tiny = dataclasses.replace(base, noise_t=1, noise_m=1, rounding_bound=2.0)
    loose = epsilon(tiny, rounds=1, delta=1e-5)
    exact_scale = 2.0 / math.sqrt(7)  # Delta / (sqrt(n) sigma)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1 / exact_scale), 1)
    assert loose > accountant.get_epsilon(1e-5)


def test_distributed_dp_settings_are_validated():
    with pytest.raises(PrivacyPolicyError, match="clip_norm"):
        SecAggConfig(noise_multiplier=1.0, clip_range=1.0)
    with pytest.raises(PrivacyPolicyError, match="clip_range"):
        SecAggConfig(noise_multiplier=1.0, clip_norm=1.0, clip_range=1.0)
    with pytest.raises(ValueError, match="distributed DP"):
        epsilon(SecAggConfig(clip_range=1.0).resolve(10, 10), rounds=1, delta=1e-5)
