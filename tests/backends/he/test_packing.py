"""Layouts, diagonal linear maps and polynomials on the exact slot simulator.

The simulator carries float64 slot values with SEAL's level and scale rules
(and refuses rotations without a Galois key), so these tests check the
packing logic against numpy with no encryption noise and no key generation.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privkeras.backends.he.ckks import SimulatedOps, chain_primes
from privkeras.backends.he.layout import SlotLayout
from privkeras.backends.he.linear_transform import LinearTransform
from privkeras.backends.he.polynomial import PolynomialEvaluator

SLOTS = 256
PRIMES = chain_primes(4096, (34, 24, 24, 24, 24, 34))  # SEAL's real primes, 0.3% off 2**24
SCALE = 2.0**24


def _run_linear(matrix, bias, block, n_samples, seed=0):
    m, n = matrix.shape
    lin, lout = SlotLayout.vector(n, SLOTS, block), SlotLayout.vector(m, SLOTS, block)
    transform = LinearTransform(matrix, bias, lin, lout)
    ops = SimulatedOps(PRIMES, SLOTS, rotation_steps=transform.rotation_steps)
    x = np.random.default_rng(seed).normal(size=(n_samples, n))
    cts = [ops.encrypt_values(v, 3, SCALE) for v in lin.pack(x)]
    out = transform.apply(ops, cts)
    y = lout.unpack(np.stack([ops.decrypt_values(c) for c in out]), n_samples)
    return x, y, out, ops, transform


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    log_block=st.integers(0, 8),
    samples=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_linear_map_matches_numpy_for_any_shape_and_packing(m, n, log_block, samples, seed):
    block = 2**log_block
    n_samples = max(1, round(samples * block))
    rng = np.random.default_rng(seed)
    matrix, bias = rng.normal(size=(m, n)), rng.normal(size=m)
    x, y, out, _, _ = _run_linear(matrix, bias, block, n_samples, seed)
    np.testing.assert_allclose(y, x @ matrix.T + bias, atol=1e-9)
    # one level per map, input scale kept exactly
    assert all(c.level == 2 and c.scale == SCALE for c in out)


def test_pack_unpack_round_trip_and_replication():
    layout = SlotLayout.vector(5, SLOTS, 4)
    x = np.arange(15.0).reshape(3, 5)
    slots = layout.pack(x)
    assert slots.shape == (1, SLOTS) and layout.tile == 8
    np.testing.assert_array_equal(layout.unpack(slots, 3), x)
    period = layout.period
    np.testing.assert_array_equal(slots[0, :period], slots[0, period : 2 * period])


def test_feature_major_packing_needs_no_rotation_and_no_galois_key():
    matrix = np.random.default_rng(0).normal(size=(7, 9))
    _, _, _, ops, transform = _run_linear(matrix, None, SLOTS, SLOTS)
    assert transform.rotation_steps == set()
    assert not any(op == "rotate" for op, _ in ops.counts)
    assert transform.product_count == 63


def test_zero_diagonals_are_skipped():
    matrix = np.diag(np.arange(1.0, 9.0))  # only the main diagonal
    x, y, _, _, transform = _run_linear(matrix, None, 1, 1)
    assert transform.product_count == 1 and transform.rotation_steps == set()
    np.testing.assert_allclose(y, x @ matrix.T, atol=1e-12)


def test_baby_step_giant_step_beats_one_rotation_per_diagonal():
    matrix = np.random.default_rng(0).normal(size=(32, 64))
    _, _, _, ops, transform = _run_linear(matrix, None, 1, 1)
    rotations = sum(n for (op, _), n in ops.counts.items() if op == "rotate")
    assert transform.product_count == 32  # min(64, 32) diagonals
    assert rotations <= 12  # vs 31 without baby-step giant-step (+1 fold)


def test_missing_galois_key_is_caught():
    matrix = np.random.default_rng(0).normal(size=(4, 4))
    lin = SlotLayout.vector(4, SLOTS, 1)
    transform = LinearTransform(matrix, None, lin, lin)
    ops = SimulatedOps(PRIMES, SLOTS, rotation_steps=set())
    cts = [ops.encrypt_values(v, 3, SCALE) for v in lin.pack(np.ones((1, 4)))]
    with pytest.raises(ValueError, match="no Galois key"):
        transform.apply(ops, cts)


@pytest.mark.parametrize(
    "coefficients, depth",
    [
        ([0, 0, 1], 1),  # square
        ([0.1, 0.5, 1.0], 1),  # monic quadratic
        ([0.1, 0.5, 0.25], 2),  # not monic
        ([0.5, 0.197, 0, -0.004], 2),  # sigmoid-like cubic, coefficient rides on x
        ([1, 2, 3, 1], 2),
        ([0.3, -1, 0.5, 0.2, 1], 2),  # monic quartic
        ([1, 0, 0, 0, 0, 0, 0, 0.01], 4),
        ([0.2, 0, 1, 0, 0, 0, 0, 0, 1], 3),  # monic degree 8
    ],
)
def test_polynomials_match_numpy_at_the_planned_depth(coefficients, depth):
    evaluator = PolynomialEvaluator(np.array(coefficients, float))
    assert evaluator.depth == depth
    ops = SimulatedOps(PRIMES, SLOTS)
    x = np.random.default_rng(1).uniform(-1.5, 1.5, SLOTS)
    out = evaluator.apply(ops, ops.encrypt_values(x, 4, SCALE))
    expected = np.polynomial.polynomial.polyval(x, coefficients)
    np.testing.assert_allclose(ops.decrypt_values(out), expected, atol=1e-10)
    assert out.level == 4 - depth


def test_a_polynomial_below_degree_two_is_refused():
    with pytest.raises(ValueError, match="degree >= 2"):
        PolynomialEvaluator(np.array([1.0, 2.0, 0.0]))
