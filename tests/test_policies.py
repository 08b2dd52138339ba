import dataclasses
import json

import pytest

import privkeras as pk
from privkeras import policies


@pytest.mark.parametrize(
    ("make", "field", "expected"),
    [
        (lambda: pk.DPSGD(l2_norm_clip=-1.0, noise_multiplier=1.0), "l2_norm_clip", "> 0"),
        (lambda: pk.DPSGD(l2_norm_clip=0.0, noise_multiplier=1.0), "l2_norm_clip", "> 0"),
        (lambda: pk.DPSGD(l2_norm_clip=float("nan"), noise_multiplier=1.0), "l2_norm_clip", "NaN"),
        (lambda: pk.DPSGD(noise_multiplier=-0.5), "noise_multiplier", ">= 0"),
        (lambda: pk.DPSGD(noise_multiplier=1.0, delta=1.0), "delta", "(0, 1)"),
        (lambda: pk.DPSGD(noise_multiplier=1.0, sampling="random"), "sampling", "poisson"),
        (lambda: pk.DPSGD(noise_multiplier=1.0, accountant="gdp"), "accountant", "pld"),
        (lambda: pk.DPSGD(target_epsilon=-3.0), "target_epsilon", "> 0"),
        (lambda: pk.MPC(protocol="spdz"), "protocol", "['aby3', 'pond']"),
        (lambda: pk.MPC(engine="jax"), "engine", "'tfe'"),
        (lambda: pk.MPC(precision_bits=64), "precision_bits", "[1, 40]"),
        (lambda: pk.MPC(precision_bits=True), "precision_bits", "integer"),
        (lambda: pk.HE(poly_modulus_degree=1000), "poly_modulus_degree", "8192"),
        (lambda: pk.HE(scale_bits=70), "scale_bits", "[20, 60]"),
        (lambda: pk.HE(security_level=100), "security_level", "128"),
        (lambda: pk.Federated(rounds=0), "rounds", "[1, "),
        (lambda: pk.Federated(fraction_fit=0.0), "fraction_fit", "(0, 1]"),
        (lambda: pk.Federated(noise_multiplier=1.0), "clip_norm", "noise_multiplier > 0"),
    ],
)
def test_bad_field_names_field_value_and_accepted_range(make, field, expected):
    with pytest.raises(pk.PrivacyPolicyError) as info:
        make()
    message = str(info.value)
    assert field in message
    assert "Received:" in message
    assert expected in message


def test_mpc_precision_bits_message_is_keras_style():
    with pytest.raises(
        pk.PrivacyPolicyError, match=r"precision_bits in \[1, 40\]\. Received: precision_bits=64"
    ):
        pk.MPC(precision_bits=64)


def test_dpsgd_needs_exactly_one_of_noise_and_target():
    with pytest.raises(
        pk.PrivacyPolicyError, match="exactly one of noise_multiplier and target_epsilon"
    ):
        pk.DPSGD(l2_norm_clip=1.0)
    with pytest.raises(pk.PrivacyPolicyError, match="exactly one"):
        pk.DPSGD(noise_multiplier=1.0, target_epsilon=2.0)


def test_zero_noise_warns_loudly():
    with pytest.warns(UserWarning, match="NOT differentially private"):
        pk.DPSGD(noise_multiplier=0.0)


def test_seeded_mpc_warns_it_is_for_tests():
    with pytest.warns(UserWarning, match="never with real secrets"):
        pk.MPC(seed=3)


def test_policies_are_frozen():
    policy = pk.MPC()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.protocol = "aby3"


@pytest.mark.parametrize(
    "policy",
    [
        pk.DPSGD(l2_norm_clip=0.5, noise_multiplier=1.3, delta=1e-6, sampling="shuffle"),
        pk.DPSGD(target_epsilon=3.0, accountant="rdp"),
        pk.Federated(rounds=3, clip_norm=1.0, noise_multiplier=0.5),
        pk.MPC(protocol="aby3", engine="torch", precision_bits=20),
        pk.HE(poly_modulus_degree=16384, scale_bits=40),
    ],
)
def test_config_round_trips_through_json(policy):
    config = json.loads(json.dumps(policies.serialize(policy)))
    assert policies.deserialize(config) == policy


@pytest.mark.parametrize(
    ("shorthand", "cls"),
    [("dp-sgd", pk.DPSGD), ("federated", pk.Federated), ("mpc", pk.MPC), ("he", pk.HE)],
)
def test_shorthands_resolve_to_documented_defaults(shorthand, cls):
    policy = policies.get(shorthand)
    assert type(policy) is cls
    assert policy.kind == shorthand


def test_dpsgd_shorthand_defaults():
    assert policies.get("dp-sgd") == pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-5)


def test_unknown_shorthand_lists_accepted_values():
    with pytest.raises(pk.PrivacyPolicyError) as info:
        policies.get("homomorphic")
    assert "'homomorphic'" in str(info.value)
    for name in ("dp-sgd", "federated", "mpc", "he"):
        assert name in str(info.value)


def test_non_policy_object_is_refused():
    with pytest.raises(pk.PrivacyPolicyError, match="of type dict"):
        policies.get({"kind": "mpc"})


def test_deserialize_refuses_unknown_kind():
    with pytest.raises(pk.PrivacyPolicyError, match="kind in"):
        policies.deserialize({"kind": "magic", "config": {}})


# -- accepted names come from the engines' registries (issue 8) ---------------------------------
def test_policies_accept_what_the_registries_hold_and_nothing_else():
    from privkeras.backends.dpsgd.accountant import available_accountants
    from privkeras.backends.mpc import runtime
    from privkeras.backends.mpc.protocols.pond import PondProtocol

    class TestProtocol(PondProtocol):
        name = "pond-policy-test"

    with pytest.raises(pk.PrivacyPolicyError, match="registered protocols"):
        pk.MPC(protocol=TestProtocol.name)
    runtime.register_protocol(TestProtocol)
    try:
        assert pk.MPC(protocol=TestProtocol.name).protocol == TestProtocol.name
    finally:
        runtime.PROTOCOLS.unregister(TestProtocol.name)
    with pytest.raises(pk.PrivacyPolicyError, match=r"\['aby3', 'pond'\]"):
        pk.MPC(protocol=TestProtocol.name)
    with pytest.raises(pk.PrivacyPolicyError) as info:
        pk.DPSGD(noise_multiplier=1.0, accountant="gdp")
    assert f"registered accountants {available_accountants()}" in str(info.value)


def test_mpc_engine_names_are_the_registered_variants():
    from privkeras.backends import registry
    from privkeras.backends.mpc import MPCTorchEngine

    class OtherVariant(MPCTorchEngine):
        name = "mpc-policy-test"
        variant = "policy-test"

    with pytest.raises(pk.PrivacyPolicyError, match=r"registered MPC engines.*\['tfe', 'torch'\]"):
        pk.MPC(engine="policy-test")
    registry.register_engine(OtherVariant)
    try:
        assert pk.MPC(engine="policy-test").engine == "policy-test"
    finally:
        registry.unregister_engine(OtherVariant.name)
    assert pk.MPC(engine=None).engine is None


def test_importing_the_policies_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, privkeras.policies; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'torch', 'keras', 'tenseal', 'jax'}))"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
    assert "tensorflow" not in result.stderr  # -X importtime lists every module imported
