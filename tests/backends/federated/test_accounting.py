"""Client-level accounting: epsilon equals dp-accounting computed directly."""

import math

import dp_accounting
import pytest

from privkeras import dpsgd
from privkeras.backends.federated import accounting


@pytest.mark.parametrize(
    ("q", "sigma", "rounds", "rel"),
    [(1.0, 1.0, 5, 1e-6), (1.0, 0.7, 12, 1e-6), (0.3, 1.2, 20, 1e-6), (0.1, 0.8, 30, 1e-6)],
)
def test_epsilon_equals_dp_accounting_pld_composed_directly(q, sigma, rounds, rel):
    """Sampled: the same PLD composition. Unsampled: the exact Gaussian, within PLD's pessimism."""
    direct = dp_accounting.pld.PLDAccountant()
    direct.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), rounds
    )
    expected = direct.get_epsilon(1e-5)
    assert accounting.epsilon(q, sigma, rounds, 1e-5) == pytest.approx(expected, rel=rel)
    assert accounting.epsilon(q, sigma, rounds, 1e-5) <= expected * (1 + 1e-9)
    # and the DP-SGD engine's accountant, for the same mechanism, agrees
    assert accounting.epsilon(q, sigma, rounds, 1e-5) == pytest.approx(
        dpsgd.compute_epsilon(q, sigma, rounds, 1e-5), rel=1e-6
    )


@pytest.mark.parametrize("q", [0.5, 1.0])
def test_ledger_composes_round_by_round_to_the_same_value(q):
    ledger = accounting.RoundLedger(1e-5)
    values = []
    for _ in range(4):
        ledger.record(q, 1.1)
        values.append(ledger.epsilon())
    assert values == sorted(values)
    assert values[-1] == pytest.approx(accounting.epsilon(q, 1.1, 4, 1e-5), rel=1e-9)
    assert ledger.count == 4


def test_a_ledger_mixing_rates_composes_every_mechanism():
    ledger = accounting.RoundLedger(1e-5)
    ledger.record(1.0, 2.0, 3)
    ledger.record(0.5, 1.5, 2)
    mixed = [accounting.Mechanism(1.0, 2.0, 3), accounting.Mechanism(0.5, 1.5, 2)]
    assert ledger.epsilon() == pytest.approx(accounting.composed_epsilon(mixed, 1e-5), rel=1e-9)
    assert ledger.epsilon() > accounting.epsilon(1.0, 2.0, 3, 1e-5)


def test_no_noise_is_infinite_and_nothing_is_zero():
    assert accounting.epsilon(0.5, 0.0, 3, 1e-5) == math.inf
    assert accounting.RoundLedger(1e-5).epsilon() == 0.0


def test_calibration_meets_the_target_within_a_tenth_of_a_percent():
    sigma = accounting.calibrate_noise(2.0, 0.2, 30, 1e-5)
    assert accounting.epsilon(0.2, sigma, 30, 1e-5) <= 2.0
    assert accounting.epsilon(0.2, sigma * 0.99, 30, 1e-5) > 2.0


def test_calibration_counts_what_was_already_spent():
    prior = [accounting.Mechanism(1.0, 4.0, 10)]
    assert accounting.composed_epsilon(prior, 1e-5) < 5.0
    sigma = accounting.calibrate_noise(8.0, 1.0, 10, 1e-5, prior=prior)
    spent = accounting.composed_epsilon([*prior, accounting.Mechanism(1.0, sigma, 10)], 1e-5)
    assert 7.98 < spent <= 8.0
    assert sigma > accounting.calibrate_noise(8.0, 1.0, 10, 1e-5)


def test_unreachable_target_is_a_policy_error():
    from privkeras.errors import PrivacyPolicyError

    with pytest.raises(PrivacyPolicyError, match="target_epsilon"):
        accounting.calibrate_noise(1e-6, 1.0, 10**5, 1e-9)
