"""Federated training on real `privkeras worker` processes over gRPC on 127.0.0.1.

Three workers (mutual TLS, development certificates, ports from the OS),
started by the fixture and always stopped by `local_owners`' context
manager (SIGKILLed ones included); every network wait has a deadline.
Runtime: about a minute on 2 shared cores (most of it TensorFlow starting
in each worker).
"""

import threading

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData
from privkeras.backends.federated.remote import GrpcTransport
from privkeras.errors import AuthenticationError, PrivacyBudgetExceededError

FEATURES, CLASSES, NAMES = 6, 3, ["alice", "bob", "carol"]


def _partitions():
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(CLASSES, FEATURES)) * 2
    parts = []
    for size in (60, 50, 40):
        y = rng.integers(0, CLASSES, size=size)
        parts.append(((centers[y] + rng.normal(size=(size, FEATURES))).astype("float32"), y))
    return parts


def _model(policy):
    keras.utils.set_random_seed(3)
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
        privacy=policy,
    )
    return model


def _dp(**kwargs):
    options = {"rounds": 2, "min_owners": 2, "clip_norm": 1.0, "noise_multiplier": 1.0}
    return pk.Federated(**{**options, "timeout": 20.0, "delta": 1e-3, **kwargs})


@pytest.fixture(scope="module")
def cluster():
    parts = _partitions()
    with pk.federated.local_owners(parts, names=NAMES, max_epsilon=60.0, delta=1e-3) as owners:
        yield owners, parts


def test_three_workers_train_and_nothing_they_send_contains_their_rows(cluster, monkeypatch):
    owners, parts = cluster
    answers = {name: [] for name in NAMES}
    exchange = GrpcTransport._exchange

    def recording(self, method, data, timeout):
        answer = exchange(self, method, data, timeout)
        answers[self.owner_name].append(answer)
        return answer

    monkeypatch.setattr(GrpcTransport, "_exchange", recording)
    model = _model(_dp())
    history = model.fit(FederatedData(owners.owners), batch_size=16, verbose=0).history
    assert history["owners"] == [3.0, 3.0] and np.isfinite(history["epsilon"][-1])
    logs = model.evaluate(FederatedData(owners.owners), return_dict=True, verbose=0)
    assert set(logs) == {"loss", "accuracy"}
    weights = sum(w.size for w in model.get_weights())
    for name, (x, _) in zip(NAMES, parts):
        sent = b"".join(answers[name])
        assert len(answers[name]) == 5  # describe, configure, 2 x train, evaluate
        for row in x:
            for encoding in (row.astype("<f4"), row.astype("<f8")):
                assert encoding.tobytes() not in sent
        assert max(len(a) for a in answers[name]) < 4 * (weights + 2) + 400
    assert set(owners.pids) == set(NAMES) and all(pid > 0 for pid in owners.pids.values())


def test_the_worker_refuses_a_job_over_its_budget_with_a_typed_error(cluster):
    owners, _ = cluster
    model = _model(_dp(rounds=20, noise_multiplier=0.3))
    with pytest.raises(PrivacyBudgetExceededError, match="max_epsilon=60") as info:
        model.fit(FederatedData(owners.owners), verbose=0)
    assert all(name in str(info.value) for name in NAMES)


def test_an_unauthenticated_coordinator_is_refused(cluster, tmp_path):
    from privkeras.net.certs import make_dev_certs
    from privkeras.net.credentials import Credentials

    owners, _ = cluster
    make_dev_certs(tmp_path, ["coordinator"])  # a CA the workers do not trust
    stranger = Credentials.mutual_tls(
        tmp_path / "ca.pem", tmp_path / "coordinator.pem", tmp_path / "coordinator.key"
    )
    impostors = [
        pk.DataOwner(owner.address, name=owner.name, credentials=stranger)
        for owner in owners.owners
    ]
    model = _model(_dp(timeout=10.0))
    with pytest.raises(AuthenticationError):
        model.fit(FederatedData(impostors), verbose=0)


def test_a_worker_killed_mid_round_is_dropped_and_restarted_for_a_later_round(cluster):
    owners, _ = cluster
    events = []

    class KillBobInRound2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # bob dies while round 2 trains
                timer = threading.Timer(0.2, lambda: (owners.kill("bob"), events.append("kill")))
                timer.start()
                self.timer = timer

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.timer.join()
                owners.restart("bob")
                events.append("restart")

    model = _model(_dp(rounds=3, local_epochs=100, timeout=8.0))
    history = model.fit(
        FederatedData(owners.owners), batch_size=8, verbose=0, callbacks=[KillBobInRound2()]
    ).history
    assert events == ["kill", "restart"]
    assert history["owners"] == [3.0, 2.0, 3.0]
    dropped = model.privacy_report()["round_log"][1]["dropped"]
    assert list(dropped) == ["bob"] and "PartyError" in dropped["bob"]
