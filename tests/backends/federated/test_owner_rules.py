"""The owner's own rules: what it allows, its privacy budget, its ledger."""

import json
import math
import warnings

import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData, accounting
from privkeras.backends.federated.errors import OwnerRefusedError
from privkeras.backends.federated.owner import OwnerRules
from privkeras.errors import PrivacyBudgetExceededError, PrivacyPolicyError

from .conftest import make_model


def _dp(rounds=2, sigma=1.0, **kwargs):
    return pk.Federated(
        rounds=rounds, min_owners=1, clip_norm=1.0, noise_multiplier=sigma, **kwargs
    )


def test_an_owner_refuses_a_kind_its_allow_list_does_not_name(partitions):
    data = FederatedData.simulate(partitions, allow=["mpc"])
    model = make_model(pk.Federated(rounds=1, min_owners=1))
    with pytest.raises(OwnerRefusedError, match="allows only \\['mpc'\\]"):
        model.fit(data, verbose=0)


def test_an_owner_with_a_budget_refuses_a_job_that_is_not_private(partitions):
    data = FederatedData.simulate(partitions, max_epsilon=5.0, delta=1e-5)
    model = make_model(pk.Federated(rounds=1, min_owners=1))
    with pytest.raises(PrivacyBudgetExceededError, match=r"owner-0.*inf.*max_epsilon=5"):
        model.fit(data, verbose=0)


def test_an_owner_refuses_a_plan_over_its_budget_before_round_1(partitions):
    planned = accounting.epsilon(1.0, 1.0, 10, 1e-5)
    data = FederatedData.simulate(partitions, max_epsilon=planned * 0.9, delta=1e-5)
    model = make_model(_dp(rounds=10))
    before = model.get_weights()
    with pytest.raises(PrivacyBudgetExceededError, match="max_epsilon"):
        model.fit(data, verbose=0)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))


def test_the_ledger_counts_every_job_and_refuses_the_one_that_would_exceed(partitions):
    one_job = accounting.epsilon(1.0, 2.0, 2, 1e-5)
    data = FederatedData.simulate(partitions, max_epsilon=one_job * 1.5, delta=1e-5)
    model = make_model(_dp(rounds=2, sigma=2.0, delta=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, verbose=0)
        description = data.clients()[0].describe(5.0)
        assert description.spent_epsilon == pytest.approx(one_job, rel=1e-4)
        again = make_model(_dp(rounds=2, sigma=2.0, delta=1e-3))
        with pytest.raises(PrivacyBudgetExceededError, match="already spent"):
            again.fit(data, verbose=0)


def test_the_ledger_survives_a_restart_in_its_file(tmp_path, partitions):
    from privkeras.backends.federated.owner import OwnerService

    path = str(tmp_path / "ledger.json")
    rules = OwnerRules(max_epsilon=100.0, delta=1e-5, ledger_path=path)
    service = OwnerService("alice", *partitions[0], rules)
    service.ledger.commit("job-1", 2.5)
    with open(path) as file:
        assert json.load(file)["jobs"] == {"job-1": 2.5}
    restarted = OwnerService("alice", *partitions[0], rules)
    assert restarted.ledger.spent == 2.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"allow": ()}, "non-empty"),
        ({"allow": ("training",)}, "federated"),
        ({"max_epsilon": 1.0}, "delta"),
        ({"max_epsilon": -1.0, "delta": 1e-5}, "max_epsilon > 0"),
        ({"delta": 2.0}, "delta in"),
    ],
)
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(PrivacyPolicyError, match=match):
        OwnerRules(**kwargs)


def test_describe_tells_the_rules_and_no_rows(partitions):
    data = FederatedData.simulate(partitions[:1], max_epsilon=3.0, delta=1e-6)
    description = data.clients()[0].describe(5.0)
    assert description.n_examples == len(partitions[0][0])
    assert description.max_epsilon == 3.0 and description.delta == 1e-6
    assert description.feature_shape == (8,) and description.label_shape == ()
    assert description.label_min == 0 and description.label_max == 2 and description.labels_integral
    assert description.spent_epsilon == 0.0 and not math.isnan(description.label_max)
