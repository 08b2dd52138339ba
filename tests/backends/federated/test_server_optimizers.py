"""Server optimizers against the formulas of Reddi et al. (2021), written out by hand."""

import numpy as np
import pytest

from privkeras.backends.federated import server_optimizers
from privkeras.errors import PrivacyPolicyError


def _deltas():
    rng = np.random.default_rng(3)
    return [rng.normal(size=5) * scale for scale in (1.0, 0.1, 2.0)]


def _run(name, lr):
    optimizer = server_optimizers.get(name, lr)
    x = np.linspace(-1, 1, 5).astype(np.float32)
    for delta in _deltas():
        x = optimizer.step(x, delta)
    return x


def test_fedavg_adds_the_scaled_average():
    x0 = np.linspace(-1, 1, 5)
    expected = x0 + 0.5 * sum(_deltas())
    np.testing.assert_allclose(_run("fedavg", 0.5), expected, rtol=1e-6, atol=1e-6)


def test_fedavgm_is_server_momentum():
    x, m = np.linspace(-1, 1, 5), 0.0
    for delta in _deltas():
        m = 0.9 * m + delta
        x = x + 0.7 * m
    np.testing.assert_allclose(_run("fedavgm", 0.7), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimizers_follow_algorithm_2(name):
    b1, b2, tau, eta = 0.9, 0.99, 1e-3, 0.05
    x = np.linspace(-1, 1, 5)
    m, v = np.zeros(5), np.full(5, tau**2)
    for delta in _deltas():
        m = b1 * m + (1 - b1) * delta
        if name == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(_run(name, eta), x, rtol=1e-5, atol=1e-6)


def test_fedyogi_and_fedadam_differ():
    assert not np.allclose(_run("fedadam", 0.05), _run("fedyogi", 0.05))


def test_default_learning_rates_and_unknown_names():
    assert server_optimizers.get("fedavg").learning_rate == 1.0
    assert server_optimizers.get("fedadam").learning_rate == 0.01
    with pytest.raises(PrivacyPolicyError, match="fedyogi"):
        server_optimizers.get("fedsgd")
