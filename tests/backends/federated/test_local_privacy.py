"""local_privacy=pk.DPSGD(...): owners train with the DP-SGD engine; record-level epsilon reported."""

import math
import warnings

import pytest

import privkeras as pk
from privkeras import dpsgd
from privkeras.backends.federated import FederatedData
from privkeras.errors import CapabilityError, PrivacyBudgetExceededError

from .conftest import make_model, make_partitions


def _local(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.DPSGD(**{"l2_norm_clip": 1.0, "delta": 1e-3, **kwargs})


def test_each_owner_reports_the_record_level_epsilon_of_its_dp_sgd_steps():
    parts = make_partitions(sizes=(40, 20))
    policy = pk.Federated(rounds=2, min_owners=2, local_privacy=_local(noise_multiplier=1.2))
    model = make_model(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DP-SGD's delta > 1/n warning on tiny owners
        history = model.fit(FederatedData.simulate(parts, names=["big", "small"]), batch_size=10)
    report = model.privacy_report()["record_epsilon"]
    for name, n in (("big", 40), ("small", 20)):
        steps = 2 * math.ceil(n / 10)  # two rounds of one local epoch
        expected = dpsgd.compute_epsilon(10 / n, 1.2, steps, 1e-3)
        assert report[name] == pytest.approx(expected, rel=1e-4)
    assert history.history["record_epsilon"][-1] == pytest.approx(max(report.values()))
    assert "epsilon" not in history.history  # no client-level DP in this policy


def test_the_owner_trains_with_the_dp_sgd_engine_from_the_registry():
    parts = make_partitions(sizes=(30,))
    policy = pk.Federated(rounds=2, min_owners=1, local_privacy=_local(noise_multiplier=1.1))
    model = make_model(policy)
    data = FederatedData.simulate(parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, batch_size=10, verbose=0)
    (job,) = data.clients()[0].transport.service._jobs.values()
    local_model = job.trainer.model
    assert local_model.engine.name == "dpsgd"
    # the DP-SGD engine's own ledger agrees with the owner's
    assert local_model.privacy_report()["epsilon"] == pytest.approx(
        model.privacy_report()["record_epsilon"]["owner-0"], rel=1e-3
    )


def test_local_target_epsilon_is_met_over_all_rounds():
    parts = make_partitions(sizes=(30,))
    policy = pk.Federated(rounds=2, min_owners=1, local_privacy=_local(target_epsilon=4.0))
    model = make_model(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(FederatedData.simulate(parts), batch_size=10, verbose=0)
    assert 3.0 < model.privacy_report()["record_epsilon"]["owner-0"] <= 4.0


def test_the_owner_budget_counts_its_own_dp_sgd_epsilon():
    parts = make_partitions(sizes=(30,))
    policy = pk.Federated(rounds=3, min_owners=1, local_privacy=_local(noise_multiplier=1.0))
    planned = dpsgd.compute_epsilon(10 / 30, 1.0, 9, 1e-3)
    data = FederatedData.simulate(parts, max_epsilon=planned * 0.8, delta=1e-3)
    with pytest.raises(PrivacyBudgetExceededError, match="owner-0"):
        make_model(policy).fit(data, batch_size=10, verbose=0)


def test_fedprox_with_local_dp_sgd_is_refused_with_a_reason():
    policy = pk.Federated(
        rounds=1, min_owners=1, proximal_mu=0.1, local_privacy=_local(noise_multiplier=1.0)
    )
    with pytest.raises(CapabilityError, match="proximal_mu"):
        make_model(policy).fit(FederatedData.simulate(make_partitions(sizes=(20,))), verbose=0)
