"""MPC training on data owners' workers: the rows go from each owner straight to the parties.

A model owner (this process), two data owners (`privkeras worker --allow mpc`
processes holding their own rows) and the compute parties (`privkeras party`
processes), all on loopback over mutual TLS. The trained weights must equal
the in-process run where the same owners share the same rows; the model owner
receives nothing but the combined update; a worker whose owner does not allow
MPC refuses, named.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras import datasets
from privkeras.errors import CapabilityError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DATA = datasets.breast_cancer()
ALICE = (DATA.x_train[:150], DATA.y_train[:150])
BOB = (DATA.x_train[150:], DATA.y_train[150:])


def _model(policy):
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", privacy=policy)
    return model


@pytest.fixture(scope="module")
def cluster():
    owners = {"alice": ALICE, "bob": BOB, "carol": (ALICE[0][:20], ALICE[1][:20])}
    with pk.mpc.local_cluster("pond", owners=owners, timeout=30) as running:
        yield running


def test_owners_share_their_own_rows_and_the_model_owner_gets_only_the_update(cluster):
    alice, bob, _ = cluster.owners
    remote = _model(cluster.policy(engine="torch", seed=4, timeout=30))
    remote.fit(pk.SharedData([alice, bob]), epochs=2, batch_size=64, verbose=0)
    local = _model(pk.MPC(engine="torch", seed=4))
    local.fit(
        pk.SharedData([ALICE, BOB], owners=["alice", "bob"]), epochs=2, batch_size=64, verbose=0
    )
    for a, b in zip(remote.get_weights(), local.get_weights()):
        np.testing.assert_array_equal(a, b)
    report = remote.engine.last_report
    assert report.stats.rounds == local.engine.runtime.communicator.rounds
    for role, log in report.reveal_logs.items():
        assert {(r.what.split()[0], r.to) for r in log} == {("combined", "model_owner")}, role


def test_a_worker_that_does_not_allow_mpc_refuses_named(cluster):
    processes = cluster.processes
    carol = processes.children.pop("carol")
    carol.stop(grace=1.0)  # start carol again, now allowing federated training only
    argv = ["worker", "--name", "carol", "--data", str(processes.workdir / "carol.npz")]
    argv += ["--allow", "federated", "--listen", carol.address, *processes.credential_flags()]
    processes.start("carol", argv)
    model = _model(cluster.policy(engine="torch", seed=4, timeout=10))
    with pytest.raises(CapabilityError, match="carol"):
        model.fit(pk.SharedData(cluster.owners), epochs=1, batch_size=64, verbose=0)


def test_workers_need_networked_parties():
    model = _model(pk.MPC(engine="torch", seed=1))
    with pytest.raises(CapabilityError, match="parties"):
        model.fit(pk.SharedData([pk.DataOwner("127.0.0.1:9", name="x")]), epochs=1, verbose=0)
