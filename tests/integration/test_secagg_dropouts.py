"""Secure aggregation with worker processes SIGKILLed at each stage of a round.

Ten `privkeras worker` processes on 127.0.0.1 (mutual TLS, ports from the
OS), started by the fixture and always stopped by `local_owners`' context
manager, killed ones included; every wait has a deadline (`timeout`). A
third of them is killed (SIGKILL) after sharing their keys (before their
masked update), after their masked update, and while the coordinator asks
for the unmasking shares: the round completes and equals the plain round
over the owners whose updates are in the sum. With four gone the round fails
with a `PartyError` naming the stage and the owners. Killed workers are
restarted (on the same address) between tests, in parallel. Runtime: about
a minute and a half on 2 cores (TensorFlow starting in each worker, and one
`TIMEOUT` per stage at which dead workers are asked), more on a shared box.
"""

import threading

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData, secagg
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator
from privkeras.errors import PartyError

FEATURES, CLASSES = 6, 3
NAMES = [f"owner-{i}" for i in range(10)]
#: Seconds an owner has per request; a killed worker is found dead when it runs out (the
#: transport retries refused connections until then, as it does for a restarting peer).
TIMEOUT = 10.0


def _partitions():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(CLASSES, FEATURES)) * 2
    parts = []
    for size in range(12, 22):
        y = rng.integers(0, CLASSES, size=size)
        parts.append(((centers[y] + rng.normal(size=(size, FEATURES))).astype("float32"), y))
    return parts


def _model(secure: bool, timeout: float = TIMEOUT):
    keras.utils.set_random_seed(9)
    model = pk.PrivateSequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=pk.Federated(rounds=1, timeout=timeout, secure_aggregation=secure),
    )
    return model


def _flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def _fit(model, owners):
    return model.fit(FederatedData(owners), batch_size=8, shuffle=False, verbose=0)


@pytest.fixture(scope="module")
def cluster():
    with pk.federated.local_owners(_partitions(), names=NAMES) as owners:
        plain = _model(secure=False, timeout=120.0)  # also warms up every worker's TensorFlow
        _fit(plain, owners.owners)  # the oracle with every owner in the sum
        yield owners, _flat(plain)


def _kill(cluster, names):
    for name in names:
        cluster.kill(name)


def _restart(cluster, names):
    threads = [threading.Thread(target=cluster.restart, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_third_killed_after_sharing_keys_before_the_masked_update(cluster, monkeypatch):
    owners, _ = cluster
    victims = ["owner-1", "owner-4", "owner-7"]
    prepare = SecAggPlusAggregator.prepare

    def kill_after_prepare(self, context):
        extra = prepare(self, context)  # keys advertised and shared
        _kill(owners, victims)
        return extra

    monkeypatch.setattr(SecAggPlusAggregator, "prepare", kill_after_prepare)
    secure = _model(secure=True)
    history = _fit(secure, owners.owners).history
    log = secure.privacy_report()["round_log"][0]
    assert history["owners"] == [7.0] and sorted(log["dropped"]) == victims
    assert log["aggregation"]["dropped_at"] == {"masked_input": victims}
    monkeypatch.undo()
    survivors = [o for o in owners.owners if o.name not in victims]
    plain = _model(secure=False)
    _fit(plain, survivors)  # the oracle: the same round over the seven, plain
    np.testing.assert_allclose(_flat(secure), _flat(plain), atol=2e-6)
    _restart(owners, victims)


def test_a_third_killed_after_their_masked_update(cluster, monkeypatch):
    owners, everyone = cluster
    victims = ["owner-0", "owner-5", "owner-9"]
    total = SecAggPlusAggregator.sum

    def kill_before_unmasking(self, context, payloads):
        _kill(owners, victims)  # their masked inputs have arrived
        return total(self, context, payloads)

    monkeypatch.setattr(SecAggPlusAggregator, "sum", kill_before_unmasking)
    secure = _model(secure=True)
    history = _fit(secure, owners.owners).history
    log = secure.privacy_report()["round_log"][0]
    assert history["owners"] == [10.0] and sorted(log["dropped"]) == victims
    assert all("is in the sum" in why for why in log["dropped"].values())
    np.testing.assert_allclose(_flat(secure), everyone, atol=2e-6)
    _restart(owners, victims)


def test_a_third_killed_while_they_are_asked_for_their_unmasking_shares(cluster, monkeypatch):
    owners, everyone = cluster
    victims = ["owner-2", "owner-3", "owner-6"]
    call = SecAggPlusAggregator._call

    def kill_as_asked(self, context, stage, message, names, build):
        def build_and_kill(name):
            if stage == "unmasking" and name in victims:
                owners.kill(name)  # dies as its unmask request is sent
            return build(name)

        return call(self, context, stage, message, names, build_and_kill)

    monkeypatch.setattr(SecAggPlusAggregator, "_call", kill_as_asked)
    secure = _model(secure=True)
    history = _fit(secure, owners.owners).history
    assert history["owners"] == [10.0]
    assert sorted(secure.privacy_report()["round_log"][0]["dropped"]) == victims
    np.testing.assert_allclose(_flat(secure), everyone, atol=2e-6)
    _restart(owners, victims)


def test_four_killed_after_advertising_fail_the_round_naming_the_stage_and_them(
    cluster, monkeypatch
):
    owners, _ = cluster
    victims = ["owner-0", "owner-3", "owner-6", "owner-8"]
    advertise = SecAggPlusAggregator._advertise_keys

    def kill_after_advertising(self, context, coordinator):
        advertise(self, context, coordinator)
        _kill(owners, victims)

    monkeypatch.setattr(SecAggPlusAggregator, "_advertise_keys", kill_after_advertising)
    failing = _model(secure=True)
    before = _flat(failing)
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(failing, owners.owners)
    error = info.value
    assert isinstance(error, PartyError) and error.stage == "share_keys"
    assert error.owners == tuple(victims) and "min_survivors=7" in str(error)
    assert "round 1" in str(error) and all(repr(name) in str(error) for name in victims)
    np.testing.assert_array_equal(_flat(failing), before)  # no aggregate applied
