"""Errors of the approximations on the ranges their docstrings state (16 fractional bits).

Each case evaluates a dense grid over the stated range in one call and
compares with numpy; the bounds are those of the table in
privkeras/backends/mpc/approximations.py.
"""

import numpy as np
import pytest

from privkeras.backends.mpc import approximations
from privkeras.backends.mpc.runtime import MPCRuntime

pytestmark = pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module", params=["pond", "aby3"])
def rt(request):
    return MPCRuntime(request.param, kernels="torch", seed=21)


def _errors(rt, fn, reference, xs):
    got = fn(rt.share(xs)).reveal()
    return np.abs(got - reference(xs))


def test_exp(rt):
    xs = np.linspace(-16, 4, 801)
    assert np.all(_errors(rt, lambda s: s.exp(), np.exp, xs) <= 1e-4 + 2e-3 * np.exp(xs))
    far = np.linspace(-150, -16, 301)
    assert np.max(_errors(rt, lambda s: s.exp(), np.exp, far)) <= 1e-4
    negative = np.linspace(-500, 0, 801)
    assert np.max(_errors(rt, approximations.exp_limit, np.exp, negative)) <= 2e-3


def test_reciprocal(rt):
    magnitudes = np.geomspace(0.05, 500, 401)
    xs = np.concatenate([magnitudes, -magnitudes])
    errors = _errors(rt, lambda s: s.reciprocal(), lambda v: 1 / v, xs)
    assert np.all(errors <= 1e-2 / np.abs(xs) + 2.0**-16)
    ones_to_n = np.linspace(1, 10, 201)
    on_interval = _errors(
        rt, lambda s: approximations.reciprocal_on_interval(s, 10), lambda v: 1 / v, ones_to_n
    )
    assert np.max(on_interval) <= 1e-4


def test_sigmoid_and_tanh(rt):
    xs = np.concatenate([np.linspace(-400, 400, 401), np.linspace(-8, 8, 401)])
    assert np.max(_errors(rt, lambda s: s.sigmoid(), _sigmoid, xs)) <= 2e-3
    assert np.max(_errors(rt, lambda s: s.tanh(), np.tanh, xs / 2)) <= 4e-3


def test_softmax(rt):
    rng = np.random.default_rng(3)
    logits = np.concatenate([rng.normal(size=(32, 10)) * 5, np.zeros((1, 10))])
    logits[0, 0] = 140.0  # max - x up to ~150
    assert np.max(_errors(rt, lambda s: s.softmax(axis=-1), _softmax, logits)) <= 1e-3
    columns = logits[:6, :3].T
    got = rt.share(columns).softmax(axis=0).reveal()
    assert np.max(np.abs(got - _softmax(columns.T).T)) <= 1e-3


def test_log(rt):
    xs = np.geomspace(0.05, 100, 401)
    assert np.max(_errors(rt, lambda s: s.log(), np.log, xs)) <= 5e-3


def test_reciprocal_on_interval_refuses_an_empty_interval(rt):
    with pytest.raises(ValueError, match="upper >= 1"):
        approximations.reciprocal_on_interval(rt.share([1.0]), 0.5)
