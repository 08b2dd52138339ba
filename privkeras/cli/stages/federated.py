"""Demo stage: DP-FedAvg on three `privkeras worker` processes (breast cancer, split three ways).

The workers run on 127.0.0.1 with mutual TLS (development certificates),
each holding its rows and its own privacy budget; the stage prints the test
accuracy, the client-level epsilon, the seconds per round and the bytes each
worker sent per round.
"""

from __future__ import annotations

import statistics
import time

import keras

from privkeras import datasets
from privkeras.cli.stages.plaintext import breast_cancer_model
from privkeras.policies import Federated

#: Three owners every round, updates clipped to 0.5, noise 1 x clip on their sum.
POLICY = Federated(rounds=5, min_owners=2, clip_norm=0.5, noise_multiplier=1.0, delta=1e-5)
OWNERS = ["alice", "bob", "carol"]


def run(verbose: bool = False) -> dict:
    import privkeras as pk

    keras.utils.set_random_seed(0)
    data = datasets.breast_cancer()
    third = len(data.x_train) // 3
    parts = [
        (data.x_train[i * third : (i + 1) * third], data.y_train[i * third : (i + 1) * third])
        for i in range(3)
    ]
    model = breast_cancer_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=POLICY,
    )
    start = time.perf_counter()
    with pk.federated.local_owners(parts, names=OWNERS, max_epsilon=20.0, delta=1e-5) as cluster:
        started = time.perf_counter() - start
        owners = pk.FederatedData(cluster.owners)
        try:
            model.fit(owners, batch_size=32, verbose=2 if verbose else 0)
        finally:
            owners.close()
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    report = model.privacy_report()
    rounds = report["round_log"]
    per_round = statistics.median(r["seconds"] for r in rounds[1:])
    up = statistics.median(v for r in rounds for v in r["bytes_up"].values())
    print(
        f"[federated] breast cancer on {len(OWNERS)} worker processes (mTLS, loopback): test "
        f"accuracy {accuracy:.3f}, client-level epsilon {report['epsilon']:.2f} at delta "
        f"{report['delta']:g} ({len(rounds)} rounds, {per_round * 1e3:.0f} ms/round, "
        f"{up / 1e3:.1f} KB up per owner per round; workers started in {started:.1f} s)"
    )
    return {
        "accuracy": float(accuracy),
        "epsilon": report["epsilon"],
        "seconds_per_round": per_round,
    }
