"""Owners that fail: dropped from the round, the round completes with min_owners, else PartyError."""

import threading
import time

import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData
from privkeras.backends.federated.protocol import OwnerProtocol
from privkeras.errors import PartyError

from .conftest import flat, make_model

RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _release_hanging_owners():
    RELEASE.clear()
    yield
    RELEASE.set()


class Faulty(OwnerProtocol):
    """Wraps a simulated owner; `fail(round)` says how its train call misbehaves."""

    def __init__(self, inner, fail, concurrent=False):
        self.inner, self.name, self.fail = inner, inner.name, fail
        self.concurrent = concurrent
        self.calls = []

    def describe(self, timeout):
        return self.inner.describe(timeout)

    def configure(self, job, timeout):
        return self.inner.configure(job, timeout)

    def train(self, job_id, round_index, weights, fields, timeout):
        self.calls.append(round_index)
        mode = self.fail(round_index)
        if mode == "raise":
            raise RuntimeError("disk on fire")
        if mode == "hang":
            RELEASE.wait(60)
            raise RuntimeError("released")
        if mode == "slow":
            answer = self.inner.train(job_id, round_index, weights, fields, timeout)
            time.sleep(timeout + 0.2)
            return answer
        return self.inner.train(job_id, round_index, weights, fields, timeout)

    def evaluate(self, job_id, weights, batch_size, timeout):
        return self.inner.evaluate(job_id, weights, batch_size, timeout)


def _owners(partitions, faults, concurrent=False):
    clients = FederatedData.simulate(partitions, names=["alice", "bob", "carol"]).clients()
    return [Faulty(c, faults.get(c.name, lambda r: None), concurrent=concurrent) for c in clients]


def _fit(partitions, owners, min_owners, rounds=2, timeout=30.0):
    model = make_model(pk.Federated(rounds=rounds, min_owners=min_owners, timeout=timeout))
    return model, model.fit(FederatedData(owners), verbose=0, shuffle=False)


@pytest.mark.parametrize("mode", ["raise", "slow"])
def test_a_failing_owner_is_dropped_and_the_round_completes(partitions, mode):
    owners = _owners(partitions, {"bob": lambda r: mode if r == 0 else None})
    model, history = _fit(partitions, owners, min_owners=2, timeout=3 if mode == "slow" else 30)
    assert history.history["owners"] == [2.0, 3.0]
    log = model.privacy_report()["round_log"]
    assert list(log[0]["dropped"]) == ["bob"] and log[1]["dropped"] == {}
    assert ("disk on fire" if mode == "raise" else "after") in log[0]["dropped"]["bob"]


def test_round_without_the_dropped_owner_averages_the_rest(partitions):
    """The round that drops bob equals the round of alice and carol alone."""
    owners = _owners(partitions, {"bob": lambda r: "raise"})
    model_a, _ = _fit(partitions, owners, min_owners=2, rounds=1)
    two = FederatedData.simulate([partitions[0], partitions[2]], names=["alice", "carol"])
    model_b = make_model(pk.Federated(rounds=1, min_owners=2))
    model_b.fit(two, verbose=0, shuffle=False)
    np.testing.assert_allclose(flat(model_a.get_weights()), flat(model_b.get_weights()), atol=1e-6)


def test_too_few_answers_raise_party_error_naming_the_missing_owners(partitions):
    owners = _owners(partitions, {"bob": lambda r: "raise", "carol": lambda r: "raise"})
    with pytest.raises(PartyError) as info:
        _fit(partitions, owners, min_owners=2)
    message = str(info.value)
    assert "Round 1" in message and "at least 2" in message
    assert "bob" in message and "carol" in message and "alice" not in message.split("Missing")[1]
    assert "disk on fire" in message


def test_a_hanging_remote_owner_is_dropped_within_the_timeout(partitions):
    owners = _owners(partitions, {"carol": lambda r: "hang" if r == 0 else None}, concurrent=True)
    start = time.monotonic()
    model, history = _fit(partitions, owners, min_owners=2, rounds=1, timeout=3.0)
    assert time.monotonic() - start < 3.0 + 2.0 + 10  # timeout, grace, set-up
    assert history.history["owners"] == [2.0]
    assert "carol" in model.privacy_report()["round_log"][0]["dropped"]


def test_a_restarted_owner_that_lost_the_job_is_sent_it_again(partitions):
    data = FederatedData.simulate(partitions)
    model = make_model(pk.Federated(rounds=2, min_owners=3))

    import keras

    class Forget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # as if owner-1 restarted between the rounds
                data.clients()[1].transport.service._jobs.clear()

    history = model.fit(data, verbose=0, callbacks=[Forget()])
    assert history.history["owners"] == [3.0, 3.0]


def test_all_owners_must_answer_before_round_1(partitions):
    owners = _owners(partitions, {})

    def broken(timeout):
        raise PartyError("Owner 'bob': unreachable")

    owners[1].describe = broken
    model = make_model(pk.Federated(rounds=1, min_owners=1))
    with pytest.raises(PartyError, match="did not describe their data: bob"):
        model.fit(FederatedData(owners), verbose=0)
