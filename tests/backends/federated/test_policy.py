"""The Federated policy: fields, validation with Keras-style errors, JSON round trip."""

import dataclasses
import json
import warnings

import pytest

import privkeras as pk
from privkeras import policies


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"rounds": 0}, "rounds", "[1, "),
        ({"local_epochs": 1.5}, "local_epochs", "integer"),
        ({"fraction_fit": 1.5}, "fraction_fit", "(0, 1]"),
        ({"min_owners": 0}, "min_owners", "[1, "),
        ({"timeout": 0}, "timeout", "> 0"),
        ({"timeout": float("inf")}, "timeout", "finite"),
        ({"server_optimizer": "fedsgd"}, "server_optimizer", "'fedyogi'"),
        ({"server_learning_rate": -1.0}, "server_learning_rate", "> 0"),
        ({"proximal_mu": -0.1}, "proximal_mu", ">= 0"),
        ({"clip_norm": 0.0}, "clip_norm", "> 0"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier", ">= 0"),
        ({"clip_norm": 1.0, "target_epsilon": 0.0}, "target_epsilon", "> 0"),
        ({"delta": 0.0}, "delta", "(0, 1)"),
        ({"noise_multiplier": 1.0}, "clip_norm", "noise_multiplier > 0"),
        ({"target_epsilon": 2.0}, "clip_norm", "target_epsilon is set"),
        ({"adaptive_clipping": True}, "clip_norm", "adaptive_clipping=True"),
        ({"adaptive_clipping": 1}, "adaptive_clipping", "bool"),
        ({"secure_aggregation": "yes"}, "secure_aggregation", "bool"),
        ({"local_privacy": "dp-sgd"}, "local_privacy", "DPSGD"),
        ({"local_privacy": {"kind": "mpc", "config": {}}}, "local_privacy", "DPSGD"),
        ({"dp": "local"}, "dp", "'distributed'"),
        ({"dp": "distributed", "clip_norm": 1.0, "noise_multiplier": 1.0}, "dp", "secure_agg"),
        ({"dp": "distributed", "secure_aggregation": True}, "dp", "noise"),
    ],
)
def test_bad_field_is_named_with_what_was_received(kwargs, field, expected):
    with pytest.raises(pk.PrivacyPolicyError) as info:
        pk.Federated(**kwargs)
    message = str(info.value)
    assert field in message
    assert "Received:" in message
    assert expected in message


def test_noise_and_target_epsilon_exclude_each_other():
    with pytest.raises(pk.PrivacyPolicyError, match="at most one of noise_multiplier"):
        pk.Federated(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=3.0)


def test_zero_noise_with_clipping_warns_it_is_not_private():
    with pytest.warns(UserWarning, match="NOT differentially private"):
        pk.Federated(clip_norm=1.0, noise_multiplier=0.0)


def test_defaults_are_plain_fedavg_and_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = pk.Federated()
    assert policy.server_optimizer == "fedavg"
    assert policy.clip_norm is None and policy.noise_multiplier is None
    assert policy.secure_aggregation is False and policy.dp == "central"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        pk.Federated().rounds = 3


@pytest.mark.parametrize(
    "policy",
    [
        pk.Federated(),
        pk.Federated(
            rounds=3,
            local_epochs=2,
            fraction_fit=0.5,
            min_owners=1,
            timeout=5.0,
            server_optimizer="fedyogi",
            server_learning_rate=0.05,
            proximal_mu=0.01,
            clip_norm=1.0,
            target_epsilon=4.0,
            delta=1e-6,
            adaptive_clipping=True,
            local_privacy=pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1),
        ),
        pk.Federated(
            clip_norm=0.5, noise_multiplier=1.0, secure_aggregation=True, dp="distributed"
        ),
    ],
)
def test_config_round_trips_through_json(policy):
    config = json.loads(json.dumps(policies.serialize(policy)))
    restored = policies.deserialize(config)
    assert restored == policy
    assert isinstance(restored.local_privacy, (pk.DPSGD, type(None)))


def test_local_privacy_is_kept_as_a_policy_config():
    policy = pk.Federated(local_privacy=pk.DPSGD(noise_multiplier=1.0))
    local = policy.get_config()["config"]["local_privacy"]
    assert local["kind"] == "dp-sgd"
    assert local["config"]["noise_multiplier"] == 1.0
