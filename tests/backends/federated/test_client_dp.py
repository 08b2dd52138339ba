"""Client-level DP pieces: Poisson sampling, adaptive clipping and its accounting."""

import math
import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData, accounting
from privkeras.backends.federated.coordinator import ClientDP

from .conftest import make_model, make_partitions


def _round_of(model):
    return model.privacy_report()["round_log"]


def test_poisson_sampling_asks_each_owner_with_probability_fraction_fit():
    parts = make_partitions(sizes=(5,) * 10)
    model = make_model(pk.Federated(rounds=30, fraction_fit=0.3, min_owners=1))
    np.random.seed(0)
    model.fit(FederatedData.simulate(parts), verbose=0)
    sizes = [len(r["cohort"]) for r in _round_of(model)]
    mean, sd = 10 * 0.3, math.sqrt(10 * 0.3 * 0.7 / 30)
    assert abs(np.mean(sizes) - mean) < 5 * sd
    assert len(set(sizes)) > 1  # Poisson: the cohort size varies


def test_sampling_does_not_follow_numpys_seed():
    parts = make_partitions(sizes=(5,) * 10)
    cohorts = []
    for _ in range(2):
        model = make_model(pk.Federated(rounds=8, fraction_fit=0.5, min_owners=1))
        np.random.seed(0)
        keras.utils.set_random_seed(0)
        model.fit(FederatedData.simulate(parts), verbose=0)
        cohorts.append([tuple(r["cohort"]) for r in _round_of(model)])
    assert cohorts[0] != cohorts[1]  # keyed from os.urandom (2^-80 chance of a tie)


def test_adaptive_clipping_moves_the_norm_geometrically_towards_the_median():
    """Noise-free: every update is below a huge clip norm, so C shrinks by exp(-0.2 * 0.5)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = pk.Federated(
            rounds=3, min_owners=3, clip_norm=100.0, noise_multiplier=0.0, adaptive_clipping=True
        )
    model = make_model(policy)
    history = model.fit(FederatedData.simulate(make_partitions()), verbose=0).history
    expected = [100.0 * math.exp(-0.1) ** r for r in (1, 2, 3)]
    np.testing.assert_allclose(history["clip_norm"], expected, rtol=1e-9)


def test_adaptive_clipping_rises_when_every_update_is_clipped():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = pk.Federated(
            rounds=2, min_owners=3, clip_norm=1e-4, noise_multiplier=0.0, adaptive_clipping=True
        )
    history = make_model(policy).fit(FederatedData.simulate(make_partitions()), verbose=0).history
    np.testing.assert_allclose(history["clip_norm"], [1e-4 * math.exp(0.1), 1e-4 * math.exp(0.2)])


def test_adaptive_clipping_noise_split_costs_one_gaussian_of_the_policy_multiplier():
    dp = ClientDP.resolve(clip_norm=1.0, noise=1.1, expected=100.0, adaptive=True)
    assert dp.indicator_noise == pytest.approx(5.0)  # expected / 20
    # 1/z^2 = 1/sigma_delta^2 + 1/(2 sigma_b)^2: the pair is one Gaussian mechanism of z
    assert dp.update_noise**-2 + (2 * dp.indicator_noise) ** -2 == pytest.approx(1.1**-2)
    small = ClientDP.resolve(clip_norm=1.0, noise=1.1, expected=4.0, adaptive=True)
    assert small.indicator_noise == pytest.approx(1.1)
    assert small.update_noise == pytest.approx(1.1 / math.sqrt(0.75))


def test_adaptive_clipping_epsilon_is_accounted_at_the_policy_multiplier():
    parts = make_partitions()
    policy = pk.Federated(
        rounds=2,
        min_owners=3,
        clip_norm=1.0,
        noise_multiplier=1.5,
        adaptive_clipping=True,
        delta=1e-3,
    )
    model = make_model(policy)
    history = model.fit(FederatedData.simulate(parts), verbose=0).history
    assert history["epsilon"][-1] == pytest.approx(accounting.epsilon(1.0, 1.5, 2, 1e-3))
    assert history["clip_norm"][-1] != 1.0


def test_epsilon_per_round_with_poisson_sampling_equals_dp_accounting():
    import dp_accounting

    parts = make_partitions(sizes=(5,) * 10)
    policy = pk.Federated(
        rounds=3, fraction_fit=0.4, min_owners=1, clip_norm=1.0, noise_multiplier=1.3, delta=1e-3
    )
    history = make_model(policy).fit(FederatedData.simulate(parts), verbose=0).history
    for rounds, value in enumerate(history["epsilon"], start=1):
        direct = dp_accounting.pld.PLDAccountant()
        event = dp_accounting.PoissonSampledDpEvent(0.4, dp_accounting.GaussianDpEvent(1.3))
        direct.compose(event, rounds)
        assert value == pytest.approx(direct.get_epsilon(1e-3), rel=1e-6)
