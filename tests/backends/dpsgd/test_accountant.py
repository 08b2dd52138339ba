"""The accountant against dp-accounting used directly, and the published MNIST values."""

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from privkeras import dpsgd
from privkeras.backends.dpsgd.accountant import PrivacyLedger, Segment, UnreachableEpsilonError
from privkeras.errors import PrivacyPolicyError

MNIST = {"sample_rate": 256 / 60000, "noise_multiplier": 1.1, "steps": 14062, "delta": 1e-5}


def _event(q, sigma, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def _reference(accountant, events, delta):
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def test_mnist_epsilons_match_dp_accounting_and_the_published_values():
    got_pld = dpsgd.compute_epsilon(**MNIST)
    got_rdp = dpsgd.compute_epsilon(**MNIST, accountant="rdp")
    event = _event(MNIST["sample_rate"], MNIST["noise_multiplier"], MNIST["steps"])
    assert got_pld == pytest.approx(_reference(pld.PLDAccountant(), [event], 1e-5), rel=1e-9)
    assert got_rdp == pytest.approx(_reference(rdp.RdpAccountant(), [event], 1e-5), rel=1e-9)
    assert round(got_pld, 2) == 2.38
    assert round(got_rdp, 2) == 2.60


def test_ledger_composes_segments_like_dp_accounting():
    ledger = PrivacyLedger(delta=1e-5, accountant="pld")
    ledger.record(0.01, 1.0, 50)
    ledger.record(0.01, 1.0, 50)  # merges with the previous segment
    ledger.record(0.02, 1.5, 30)
    assert ledger.segments == (Segment(0.01, 1.0, 100), Segment(0.02, 1.5, 30))
    assert ledger.steps == 130
    expected = _reference(
        pld.PLDAccountant(), [_event(0.01, 1.0, 100), _event(0.02, 1.5, 30)], 1e-5
    )
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert ledger.estimate() >= ledger.epsilon() * (1 - 1e-9)  # the fast value is an upper bound


def test_no_noise_is_infinite_and_no_step_is_free():
    assert dpsgd.compute_epsilon(0.1, 0.0, 10, 1e-5) == math.inf
    assert dpsgd.compute_epsilon(0.1, 1.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrated_noise_meets_the_target_tightly(accountant):
    q, steps, delta, target = 0.02, 500, 1e-5, 2.0
    sigma = dpsgd.calibrate_noise(target, q, steps, delta, accountant=accountant)
    assert dpsgd.compute_epsilon(q, sigma, steps, delta, accountant) <= target
    assert dpsgd.compute_epsilon(q, sigma * 0.99, steps, delta, accountant) > target


def test_unreachable_target_says_so():
    with pytest.raises(UnreachableEpsilonError, match="cannot be reached"):
        dpsgd.calibrate_noise(1e-4, 1.0, 1000, 1e-5)


def test_max_steps_is_the_last_step_within_budget():
    q, sigma, delta, target = 0.05, 1.0, 1e-5, 1.5
    steps = dpsgd.max_steps(target, q, sigma, delta)
    assert dpsgd.compute_epsilon(q, sigma, steps, delta) <= target
    assert dpsgd.compute_epsilon(q, sigma, steps + 1, delta) > target


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dpsgd.compute_epsilon(1.5, 1.0, 10, 1e-5), "sample_rate in [0, 1]"),
        (lambda: dpsgd.compute_epsilon(0.1, -1.0, 10, 1e-5), "noise_multiplier >= 0"),
        (lambda: dpsgd.compute_epsilon(0.1, 1.0, 2.5, 1e-5), "steps to be an integer"),
        (lambda: dpsgd.compute_epsilon(0.1, 1.0, 10, 1.0), "delta in (0, 1)"),
        (lambda: dpsgd.compute_epsilon(0.1, 1.0, 10, 1e-5, "gdp"), "['pld', 'rdp']"),
        (lambda: dpsgd.calibrate_noise(-1.0, 0.1, 10, 1e-5), "target_epsilon > 0"),
        (lambda: dpsgd.steps_for_epochs(1, 10, 20), "batch_size <= dataset_size"),
    ],
)
def test_bad_arguments_name_what_was_expected(call, message):
    with pytest.raises(PrivacyPolicyError) as info:
        call()
    assert message in str(info.value)
    assert "Received" in str(info.value) or "Expected" in str(info.value)


def test_steps_for_epochs():
    assert dpsgd.steps_for_epochs(60, 60000, 256) == 60 * 235


def test_accountants_live_in_a_core_registry():
    from privkeras.backends.dpsgd import accountant
    from privkeras.core.registry import Registry
    from privkeras.errors import RegistrationError

    assert isinstance(accountant.ACCOUNTANTS, Registry)
    assert dpsgd.available_accountants() == ["pld", "rdp"]

    class Other(accountant.RDPAccountant):
        name = "rdp"

    with pytest.raises(RegistrationError, match="replace=True"):
        accountant.register_accountant(Other)
    with pytest.raises(PrivacyPolicyError, match=r"one of \['pld', 'rdp'\]. Received"):
        accountant.get_accountant("gdp")
    assert isinstance(accountant.get_accountant("rdp"), accountant.RDPAccountant)


def test_running_epsilon_composes_only_what_was_added():
    """The progress value: an upper bound within 0.01 of the exact epsilon, composed chunk by
    chunk, equal (to discretization noise) to composing everything at once."""
    ledger = PrivacyLedger(delta=1e-5, accountant="pld")
    ledger.plan(90, Segment(0.03, 1.1, 30))
    values = []
    for _ in range(3):  # epochs
        ledger.record(0.03, 1.1, 30)
        values.append(ledger.running())
    ledger.record(0.05, 1.5, 10)  # a new segment (another fit)
    values.append(ledger.running())
    assert values == sorted(values)
    exact = ledger.epsilon()
    assert exact <= values[-1] <= exact + 0.01
    fresh = PrivacyLedger(delta=1e-5, accountant="pld")
    for segment in ledger.segments:
        fresh.record(segment.sample_rate, segment.noise_multiplier, segment.steps)
    fresh.plan(0)
    fresh._running = type(ledger._running)(1e-5, ledger._running.interval)
    assert fresh.running() == pytest.approx(values[-1], rel=1e-6)
    rdp = PrivacyLedger(delta=1e-5, accountant="rdp")
    rdp.record(0.03, 1.1, 90)
    assert rdp.running() == rdp.epsilon()  # RDP composes exactly, by addition
