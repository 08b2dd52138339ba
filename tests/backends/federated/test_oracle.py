"""Oracles: a federated round equals the average computed by hand from the same local runs."""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData

from .conftest import flat, keras_twin, make_model, make_partitions


def _local_run(model, x, y, epochs, batch_size, optimizer=None):
    """What one owner does, written with plain Keras: fit from the global weights."""
    twin = keras_twin(model, optimizer)
    twin.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
    return flat(twin.get_weights())


@pytest.mark.multi_backend
def test_one_round_with_full_participation_is_the_count_weighted_average(partitions):
    model = make_model(pk.Federated(rounds=1, local_epochs=2, min_owners=3))
    start = flat(model.get_weights())
    local = [_local_run(model, x, y, epochs=2, batch_size=16) for x, y in partitions]
    counts = np.array([len(x) for x, _ in partitions], dtype=np.float64)
    expected = start + sum(c * (w - start) for c, w in zip(counts, local)) / counts.sum()

    model.fit(FederatedData.simulate(partitions), batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(model.get_weights()), expected, atol=2e-6)


@pytest.mark.multi_backend
def test_one_owner_with_fedavg_equals_local_training():
    ((x, y),) = make_partitions(sizes=(60,))
    model = make_model(pk.Federated(rounds=3, min_owners=1))
    expected = _local_run(model, x, y, epochs=3, batch_size=20)  # SGD: no state across rounds
    model.fit(FederatedData.simulate([(x, y)]), batch_size=20, shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(model.get_weights()), expected, atol=2e-6)


def test_local_optimizer_state_restarts_every_round():
    """With Adam locally, two rounds are two fresh local runs, not one run of two epochs."""
    ((x, y),) = make_partitions(sizes=(40,))
    model = make_model(pk.Federated(rounds=2, min_owners=1), optimizer=keras.optimizers.Adam(0.01))
    first = _local_run(model, x, y, 1, 40, keras.optimizers.Adam(0.01))
    twin = keras_twin(model, keras.optimizers.Adam(0.01))
    twin.set_weights(_unflatten(model, first))
    twin.fit(x, y, epochs=1, batch_size=40, shuffle=False, verbose=0)
    expected = flat(twin.get_weights())
    model.fit(FederatedData.simulate([(x, y)]), batch_size=40, shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(model.get_weights()), expected, atol=2e-6)


def _unflatten(model, vector):
    out, start = [], 0
    for w in model.get_weights():
        out.append(vector[start : start + w.size].reshape(w.shape))
        start += w.size
    return out


@pytest.mark.parametrize("server", ["fedadam", "fedyogi", "fedavgm"])
def test_server_optimizer_is_applied_to_the_averaged_update(partitions, server):
    from privkeras.backends.federated import server_optimizers

    model = make_model(
        pk.Federated(rounds=2, min_owners=3, server_optimizer=server, server_learning_rate=0.05)
    )
    counts = np.array([len(x) for x, _ in partitions], dtype=np.float64)
    weights = flat(model.get_weights())
    oracle = server_optimizers.get(server, 0.05)
    twin_model = make_model(None)
    for _ in range(2):
        twin_model.set_weights(_unflatten(model, weights))
        local = [_local_run(twin_model, x, y, 1, 64) for x, y in partitions]
        delta = sum(c * (w - weights) for c, w in zip(counts, local)) / counts.sum()
        weights = oracle.step(weights, delta)
    model.fit(FederatedData.simulate(partitions), batch_size=64, shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(model.get_weights()), weights, atol=5e-6)


def test_fedprox_matches_gradient_descent_with_the_proximal_gradient():
    """Linear regression, full batch: w <- w - lr (grad MSE(w) + mu (w - w_global))."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype("float32")[:, None]
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential([keras.Input((3,)), keras.layers.Dense(1)])
    mu, lr, epochs = 0.5, 0.1, 4
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss="mse",
        privacy=pk.Federated(rounds=1, local_epochs=epochs, min_owners=1, proximal_mu=mu),
    )
    kernel, bias = (w.astype(np.float64) for w in model.get_weights())
    anchor_k, anchor_b = kernel.copy(), bias.copy()
    for _ in range(epochs):
        residual = x @ kernel + bias - y
        grad_k = 2 * x.T @ residual / len(x) + mu * (kernel - anchor_k)
        grad_b = 2 * residual.mean(axis=0) + mu * (bias - anchor_b)
        kernel, bias = kernel - lr * grad_k, bias - lr * grad_b
    model.fit(FederatedData.simulate([(x, y)]), batch_size=32, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], kernel, atol=1e-5)
    np.testing.assert_allclose(model.get_weights()[1], bias, atol=1e-5)


def test_clipped_updates_are_averaged_uniformly(partitions):
    """clip_norm without noise: the mean of each owner's update clipped to the norm."""
    clip = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = pk.Federated(rounds=1, min_owners=3, clip_norm=clip, noise_multiplier=0.0)
    model = make_model(policy)
    start = flat(model.get_weights())
    clipped = []
    for x, y in partitions:
        update = _local_run(model, x, y, 1, 64).astype(np.float64) - start
        norm = np.linalg.norm(update)
        assert norm > clip  # so that clipping is exercised
        clipped.append(update * clip / norm)
    model.fit(FederatedData.simulate(partitions), batch_size=64, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        flat(model.get_weights()), start + np.mean(clipped, axis=0), atol=1e-6
    )


def test_client_noise_has_std_sigma_clip_over_the_expected_cohort():
    """Owners with a zero learning rate send zero updates: what moves the model is the noise."""
    parts = make_partitions(sizes=(10,) * 4)
    sigma, clip = 2.0, 0.5
    model = make_model(
        pk.Federated(rounds=1, min_owners=4, clip_norm=clip, noise_multiplier=sigma, delta=1e-3),
        optimizer=keras.optimizers.SGD(0.0),
    )
    start = flat(model.get_weights())
    model.fit(FederatedData.simulate(parts), batch_size=10, verbose=0)
    noise = flat(model.get_weights()) - start
    expected_std = sigma * clip / 4  # fraction_fit * n_owners = 4
    assert noise.size > 50
    assert np.std(noise) == pytest.approx(expected_std, rel=0.25)
    assert abs(np.mean(noise)) < 5 * expected_std / np.sqrt(noise.size)
