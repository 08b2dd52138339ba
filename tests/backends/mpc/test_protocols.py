"""Protocol-level tests: sharing, products, truncation bounds, exact comparisons,
share uniformity, randomness provenance, cross-kernel bit identity, errors.

The oracle is exact integer arithmetic on the encoded values (numpy), so the
tolerances below are stated in ulps (2^-16 with the default precision).
"""

import warnings

import numpy as np
import pytest
from scipy import stats

from privkeras.backends.mpc import runtime as runtime_module
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.errors import PrecisionOverflowError

pytestmark = pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer")

PROTOCOLS = ("pond", "aby3")
KERNELS = ("numpy", "torch", "tensorflow")
F = 16
ULP = 2.0**-F


def _ring(rt, shares):
    """Reconstructs a value from its share components (test-side, no communication)."""
    k = rt.kernels
    parts = [k.to_numpy(s) for s in shares]
    total = parts[0]
    for p in parts[1:]:
        total = total + p  # int64 wraps mod 2^64
    return total


def _encoded(x):
    return np.rint(np.asarray(x) * 2**F).astype(np.int64)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kernels", KERNELS)
def test_share_reveal_round_trip_is_exact(protocol, kernels):
    rt = MPCRuntime(protocol, kernels=kernels, seed=0)
    values = np.array([[0.0, -1.5, 2**-16, -(2**30)], [123.456, 2.0**40, -(2.0**40), 7.0]])
    for owner in ("alice", "p0", "p1"):
        x = rt.share(values, owner=owner, name="v")
        np.testing.assert_array_equal(x.reveal(to="bob"), _encoded(values) / 2**F)
        assert len(x.shares) == rt.protocol.num_components


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_products_are_within_one_ulp_of_the_exact_truncated_product(protocol):
    rt = MPCRuntime(protocol, kernels="torch", seed=1)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 7)) * 30, rng.normal(size=(7, 4)) * 3
    c = rng.normal(size=(5, 7))
    ea, eb, ec = _encoded(a), _encoded(b), _encoded(c)
    x, w, y = rt.share(a), rt.share(b), rt.share(c)
    cases = {
        "matmul": ((x @ w).reveal(), (ea @ eb) / 2.0 ** (2 * F)),
        "mul": ((x * y).reveal(), (ea * ec) / 2.0 ** (2 * F)),
        "square": (x.square().reveal(), (ea * ea) / 2.0 ** (2 * F)),
        "public_matmul": ((x @ b).reveal(), (ea @ eb) / 2.0 ** (2 * F)),
        "public_rmatmul": ((a.T @ y).reveal(), (ea.T @ ec) / 2.0 ** (2 * F)),
        "public_mul": ((x * 0.25).reveal(), ea * 0.25 / 2**F),
        "reused_masks": ((x @ w).reveal(), (ea @ eb) / 2.0 ** (2 * F)),
    }
    for name, (got, exact) in cases.items():
        assert np.max(np.abs(got - exact)) <= 1.01 * ULP, name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_conv2d_shared_kernel_matches_tensorflow(protocol):
    import tensorflow as tf

    rt = MPCRuntime(protocol, kernels="numpy", seed=2)
    rng = np.random.default_rng(2)
    images, kernel = rng.normal(size=(2, 6, 5, 3)), rng.normal(size=(3, 2, 3, 4))
    ei, ek = _encoded(images) / 2**F, _encoded(kernel) / 2**F
    for strides, padding in [((1, 1), "VALID"), ((2, 2), "SAME")]:
        got = rt.share(images).conv2d(rt.share(kernel), strides, padding).reveal()
        expected = tf.nn.conv2d(ei, ek, strides, padding).numpy()
        assert np.max(np.abs(got - expected)) <= 1.01 * ULP


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_local_truncation_error_and_failure_rate_match_the_stated_bound(protocol):
    """Truncating a ring value z fails (error ~2^(64-f)) with probability <= (|z|+1)/2^64,
    otherwise the error is at most 1 ulp (SecureML, Theorem 1; for ABY3 the same bound for D = z - r)."""
    rt = MPCRuntime(protocol, kernels="numpy", seed=4)
    k, n = rt.kernels, 2**16

    def failures(magnitude):
        z = np.random.default_rng(0).choice([-1, 1], n).astype(np.int64) * magnitude
        shares = rt.protocol.truncate(rt.protocol.share(k.from_numpy(z), "alice"), F)
        error = _ring(rt, shares) - (z >> F)
        ok = np.abs(error) <= 1
        return int(np.sum(~ok))

    # In range (|v| = 2^5 after a product at scale 2^2f: |z| = 2^37): p <= 2^-27 per
    # element, 2^16 elements -> expected 5e-4 failures: none, and every error <= 1 ulp.
    assert failures(2**37) == 0
    # Stress (|z| = 2^52): p = 2^-12, expected 16 failures in 2^16 elements (sd 4).
    observed = failures(2**52)
    assert 0 < observed <= 16 + 6 * 4


SETTINGS = [
    ("pond", {"local_levels": 0}),
    ("pond", {"local_levels": 1}),
    ("pond", {"local_levels": 2}),
    ("aby3", {"helper_comparisons": True}),
    ("aby3", {"helper_comparisons": False}),
]


def _configured(protocol, settings, **kwargs):
    rt = MPCRuntime(protocol, **kwargs)
    for name, value in settings.items():
        setattr(rt.protocol, name, value)
    return rt


@pytest.mark.parametrize(("protocol", "settings"), SETTINGS)
def test_sign_bit_is_exact_over_the_whole_ring(protocol, settings):
    rt = _configured(protocol, settings, kernels="torch", seed=5)
    k = rt.kernels
    rng = np.random.default_rng(5)
    edges = np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63), 12345, -12345])
    z = np.concatenate([edges, rng.integers(-(2**63), 2**63 - 1, 4000, dtype=np.int64)])
    shares = rt.protocol.share(k.from_numpy(z.astype(np.int64)), "alice")
    before = rt.communicator.rounds
    bit = rt.protocol.negative_bit(shares)
    reconstructed = np.bitwise_xor.reduce([k.to_numpy(b) for b in bit], axis=0)
    np.testing.assert_array_equal(reconstructed, (z < 0).astype(np.int64))
    # Pond: open x + r, then the 6 carry levels less the local ones; ABY3 with the
    # helper: the same as Pond with one local level; replicated: 2 + 6 AND rounds.
    expected = {"pond": 7 - settings.get("local_levels", 0)}.get(protocol)
    if protocol == "aby3":
        expected = 6 if settings["helper_comparisons"] else 8
    assert rt.communicator.rounds - before == expected


@pytest.mark.parametrize(("protocol", "settings"), SETTINGS[1:])
def test_comparisons_relu_and_bit_injection_are_exact(protocol, settings):
    rt = _configured(protocol, settings, kernels="numpy", seed=6)
    values = np.array([0.0, ULP, -ULP, 3.5, -3.5, 2.0**40, -(2.0**40), 1.0, -7.25])
    other = np.array([0.0, 0.0, 0.0, 3.5, -3.0, 2.0**40, 0.0, 2.0, -7.25])
    x, y = rt.share(values), rt.share(other)
    np.testing.assert_array_equal((x < y).reveal(), values < other)
    np.testing.assert_array_equal((x > y).reveal(), values > other)
    np.testing.assert_array_equal((x <= y).reveal(), values <= other)
    np.testing.assert_array_equal((x >= 1.0).reveal(), values >= 1.0)
    np.testing.assert_array_equal(x.drelu().reveal(), values > 0)
    np.testing.assert_array_equal(x.relu().reveal(), np.maximum(values, 0))
    relu, drelu = x.relu_with_derivative()
    np.testing.assert_array_equal(relu.reveal(), np.maximum(values, 0))
    np.testing.assert_array_equal(drelu.reveal(), values > 0)
    np.testing.assert_array_equal(x.abs().reveal(), np.abs(values))
    bit = rt.protocol.negative_bit(x.shares)
    arithmetic = rt.protocol.bit_to_arithmetic(bit)
    np.testing.assert_array_equal(_ring(rt, arithmetic), (values < 0).astype(np.int64))


def _uniform_statistics(samples):
    """KS p-value against U[0,1) and chi-square p-value of the top byte."""
    unit = samples.view(np.uint64).astype(np.float64) / 2.0**64
    ks = stats.kstest(unit, "uniform").pvalue
    top = (samples.view(np.uint64) >> np.uint64(56)).astype(np.int64)
    chi = stats.chisquare(np.bincount(top, minlength=256)).pvalue
    return ks, chi


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_partys_shares_of_very_different_secrets_are_indistinguishable(protocol):
    """The share a party receives that depends on the secret (Pond: p1's x - r; ABY3: the
    component x - s0 - s1 held by p1 and p2) is uniform whatever the secret; a party's
    share of a product (after local truncation: uniform over a 2^(64-f) range, not the
    ring) has the same distribution whatever the secret. Fixed seed: deterministic;
    thresholds at p = 1e-4."""
    rt = MPCRuntime(protocol, kernels="numpy", seed=7)
    n = 20000
    secrets = {
        "zeros": np.zeros(n),
        "large": np.full(n, 2.0**40),
        "negative": np.full(n, -3.0),
        "varied": np.random.default_rng(7).normal(size=n) * 1e3,
    }
    received = {}
    for name, secret in secrets.items():
        x = rt.share(secret, owner="alice")
        product = x * x
        received[name] = (
            rt.kernels.to_numpy(x.shares[-1]),
            rt.kernels.to_numpy(product.shares[-1]),
        )
        ks, chi = _uniform_statistics(received[name][0])
        assert ks > 1e-4 and chi > 1e-4, name
    for which in (0, 1):
        unit = {name: pair[which].astype(np.float64) for name, pair in received.items()}
        assert stats.ks_2samp(unit["zeros"], unit["large"]).pvalue > 1e-4
        assert stats.ks_2samp(unit["negative"], unit["varied"]).pvalue > 1e-4


def _program(rt):
    """A little of everything; returns every share and output as numpy."""
    rng = np.random.default_rng(8)
    x = rt.share(rng.normal(size=(3, 4)), owner="alice")
    w = rt.share(rng.normal(size=(4, 5)), owner="bob")
    img = rt.share(rng.normal(size=(1, 4, 4, 2)), owner="alice")
    ker = rt.share(rng.normal(size=(2, 2, 2, 3)), owner="bob")
    h = (x @ w).relu()
    pooled, mask = img.conv2d(ker, padding="SAME").max_pool2d_with_mask((2, 2))
    out = {"h": h, "s": (h * 0.5 + 1.0).sigmoid(), "pooled": pooled, "mask": mask}
    shares = {
        f"{name}/{i}": rt.kernels.to_numpy(s)
        for name, t in out.items()
        for i, s in enumerate(t.shares)
    }
    revealed = {name: t.reveal() for name, t in out.items()}
    return shares, revealed


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_seed_gives_bit_identical_shares_and_outputs_on_every_kernel(protocol):
    results = {kern: _program(MPCRuntime(protocol, kernels=kern, seed=9)) for kern in KERNELS}
    reference_shares, reference_out = results["numpy"]
    for kern in ("torch", "tensorflow"):
        shares, out = results[kern]
        assert shares.keys() == reference_shares.keys()
        for key in shares:
            np.testing.assert_array_equal(shares[key], reference_shares[key], err_msg=key)
        for key in out:
            np.testing.assert_array_equal(out[key], reference_out[key], err_msg=key)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_a_seed_shares_differ_but_results_agree(protocol):
    first = MPCRuntime(protocol, kernels="torch")
    second = MPCRuntime(protocol, kernels="torch")
    values = np.array([1.0, -2.0, 3.0])
    a, b = first.share(values), second.share(values)
    assert not np.array_equal(
        first.kernels.to_numpy(a.shares[0]), second.kernels.to_numpy(b.shares[0])
    )
    np.testing.assert_array_equal((a * a).relu().reveal(), (b * b).relu().reveal())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kernels", ("torch", "tensorflow"))
def test_every_random_value_comes_from_the_secure_stream(protocol, kernels, monkeypatch):
    import tensorflow as tf
    import torch

    from privkeras.core.random import SecureStream

    def forbidden(*args, **kwargs):
        raise AssertionError("non-cryptographic randomness used")

    for module, names in [
        (
            np.random,
            ["default_rng", "random", "randint", "normal", "uniform", "rand", "randn", "bytes"],
        ),
        (torch, ["rand", "randn", "randint", "randperm", "rand_like", "randint_like", "normal"]),
        (tf.random, ["uniform", "normal", "stateless_uniform", "shuffle"]),
    ]:
        for name in names:
            monkeypatch.setattr(module, name, forbidden)
    drawn = []
    for method in ("ring", "bits"):
        original = getattr(SecureStream, method)

        def counting(self, shape, _original=original):
            drawn.append(shape)
            return _original(self, shape)

        monkeypatch.setattr(SecureStream, method, counting)
    rt = MPCRuntime(protocol, kernels=kernels)
    x = rt.share([[1.0, -2.0], [0.5, 4.0]], owner="alice")
    ((x @ x).relu().max(axis=1) + x.sigmoid().sum()).reveal()
    assert len(drawn) > 10


def test_pond_warns_about_its_dealer_once(monkeypatch):
    monkeypatch.setattr(runtime_module, "_dealer_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MPCRuntime("pond", kernels="numpy", seed=0)
        MPCRuntime("pond", kernels="numpy", seed=1)
        MPCRuntime("aby3", kernels="numpy", seed=0)
    messages = [str(w.message) for w in caught if "dealer" in str(w.message)]
    assert len(messages) == 1 and "collude" in messages[0]


def test_bad_configuration_and_bad_values_are_refused():
    with pytest.raises(ValueError, match=r"Expected protocol to be one of \['aby3', 'pond'\]"):
        MPCRuntime("spdz")
    with pytest.raises(ValueError, match="Expected kernels in"):
        MPCRuntime("aby3", kernels="jax")
    with pytest.raises(ValueError, match="precision_bits"):
        MPCRuntime("aby3", precision_bits=64)
    with pytest.raises(ValueError, match="seed"):
        MPCRuntime("aby3", seed="7")
    rt = MPCRuntime("aby3", kernels="numpy", seed=0)
    with pytest.raises(PrecisionOverflowError, match="features"):
        rt.share([1.0, np.nan], name="features")
    with pytest.raises(PrecisionOverflowError, match="weights"):
        rt.share([2.0**50], name="weights")
    with pytest.raises(PrecisionOverflowError, match="logits"):
        rt.check_range(np.array([1.0, -(2.0**47)]), "logits")
    with pytest.raises(TypeError, match="no truth value"):
        bool(rt.share([1.0]))
    other = MPCRuntime("aby3", kernels="numpy", seed=1)
    with pytest.raises(ValueError, match="same runtime"):
        rt.share([1.0]) + other.share([1.0])
